"""Checkpoint index and lazy tensor reader.

A checkpoint is a folder with `model.safetensors`, or shards listed by
`model.safetensors.index.json`, plus `config.json`. Only headers are read to build the index, and
every header is checked against the file before a tensor is read: offsets that tile the data
section exactly, byte counts that match shape and dtype, an index that names the shards' real
contents. A damaged or lying file is one error naming the file and the tensor.

Tensor bytes are read one tensor at a time with positioned reads (`readinto` at the offset the
header gives) into a fresh buffer the caller owns. We chose this over `safe_open`'s memory map:
the map's touched pages stay in the process's resident set for as long as the handle is open (so
RSS grows to the size of every input), and its tensors are views a method must not write to. An
owned buffer is freed when the merge of its tensor group ends and can serve as scratch space.

Pickle checkpoints (`pytorch_model*.bin`, as many older hub models, e.g. the textattack ones, are
saved) can run code when loaded. They are read only when the caller allows it (`--allow-pickle`),
and then with `torch.load(mmap=True, weights_only=True)`, which refuses anything but tensors.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.dtypes import FLOAT_DTYPES, ITEMSIZE, SAFETENSORS_DTYPES

MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_HINT = ("pickle files can run code when loaded: convert the model to safetensors, or pass "
               "--allow-pickle if you trust it; it is then read with torch.load(weights_only=True)")


@dataclass(frozen=True)
class TensorMeta:
    name: str
    file: Path
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    offset: int = -1  # absolute file offset of the tensor's bytes (safetensors), -1 for .bin
    nbytes: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint folder holds, from headers only."""

    path: Path
    tensors: dict[str, TensorMeta]
    config: dict[str, Any] | None

    @classmethod
    def open(cls, path: Path, *, allow_pickle: bool = False) -> Checkpoint:
        """Index a checkpoint folder. Pickle weights are read only with `allow_pickle`.

        Raises:
            CheckpointError: naming the file (and tensor) that is missing, damaged or refused.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a checkpoint folder")
        files, index = _weight_files(path, allow_pickle)
        tensors: dict[str, TensorMeta] = {}
        for file in files:
            metas = read_bin_header(file) if is_pickle(file) else read_safetensors_header(file)
            for meta in metas:
                if meta.name in tensors:
                    raise CheckpointError(
                        f"{path}: tensor {meta.name!r} is in both {tensors[meta.name].file.name} "
                        f"and {file.name}"
                    )
                tensors[meta.name] = meta
        if index is not None:
            _check_index(path, index, tensors)
        return cls(path, tensors, _read_config(path))


def is_pickle(file: Path) -> bool:
    return file.suffix in PICKLE_SUFFIXES


def pickle_files(path: Path) -> list[Path]:
    """Pickle weight files in a folder (what `--allow-pickle` is about)."""
    return sorted(f for f in path.iterdir() if f.is_file() and is_pickle(f))


def refuse_pickle_only(path: Path) -> None:
    """Raise if a model folder has no safetensors weights but pickle ones (for loaders that pick
    files themselves, such as transformers' `from_pretrained`)."""
    if any(path.glob("*.safetensors")):
        return
    found = pickle_files(path)
    if found:
        raise CheckpointError(f"{path}: holds only pickle weights "
                              f"({', '.join(f.name for f in found)})", hint=PICKLE_HINT)


def _weight_files(path: Path, allow_pickle: bool) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files to read, and the index's tensor → file map when there is one."""
    index_file = path / "model.safetensors.index.json"
    if index_file.exists():
        weight_map = _read_index(index_file)
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index_file}: lists shard(s) that do not exist: "
                                  f"{', '.join(missing)}", hint="download or copy the missing shards")
        return files, weight_map
    single = path / "model.safetensors"
    if single.exists():
        return [single], None
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards, None
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins and allow_pickle:
        return bins, None
    refuse_pickle_only(path)
    raise CheckpointError(
        f"{path}: no model.safetensors, safetensors index or pytorch_model.bin found",
        hint="point the recipe at a folder saved with save_pretrained()",
    )


def _read_index(file: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(file.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"{file}: not a valid safetensors index ({exc})") from exc
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{file}: weight_map must map tensor names to shard file names")
    folder = file.parent.resolve()
    for name, shard in weight_map.items():
        target = (folder / shard).resolve()
        if target.parent != folder or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{file}: tensor {name!r} names shard {shard!r}, which is not a "
                                  ".safetensors file in the checkpoint folder")
    return weight_map


def _check_index(path: Path, weight_map: dict[str, str], tensors: dict[str, TensorMeta]) -> None:
    """The index and the shard headers must agree on which tensor is where."""
    index_file = path / "model.safetensors.index.json"
    for name, shard in sorted(weight_map.items()):
        meta = tensors.get(name)
        if meta is None or meta.file.name != Path(shard).name:
            raise CheckpointError(f"{index_file}: tensor {name!r} is listed in {shard}, "
                                  "which does not hold it", hint="the index and shards do not match")
    extra = sorted(set(tensors) - set(weight_map))
    if extra:
        raise CheckpointError(f"{tensors[extra[0]].file}: tensor {extra[0]!r} is not listed in "
                              f"{index_file.name}", hint="the index and shards do not match")


def _read_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json"
    if not config.exists():
        return None
    try:
        data = json.loads(config.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{config}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{config}: expected a JSON object")
    return data


def read_safetensors_header(file: Path) -> list[TensorMeta]:
    """Parse and check a safetensors header (8-byte little-endian length + JSON) without reading
    tensors: every tensor's byte range must match its shape and dtype, and the ranges must tile
    the data section exactly (as the safetensors library requires)."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file (no header)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(f"{file}: safetensors header of {length} bytes is not plausible",
                                      hint="the file is not safetensors or is corrupt")
            raw = fh.read(length)
            fh.seek(0, 2)
            size = fh.tell()
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror})") from exc
    if len(raw) < length:
        raise CheckpointError(f"{file}: truncated safetensors file (header cut short)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header (not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    metas = [_tensor_meta(file, name, info, 8 + length)
             for name, info in header.items() if name != "__metadata__"]
    _check_layout(file, metas, 8 + length, size)
    return metas


def _tensor_meta(file: Path, name: str, info: Any, data_start: int) -> TensorMeta:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{file}: tensor {name!r}: corrupt header entry ({why})")

    if not isinstance(info, dict):
        raise bad("not a JSON object")
    dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise bad(f"data_offsets {offsets!r} is not [begin, end]")
    meta = TensorMeta(name, file, dtype, tuple(shape), data_start + offsets[0],
                      offsets[1] - offsets[0])
    expected = meta.numel * ITEMSIZE[dtype]
    if meta.nbytes != expected:
        raise bad(f"{meta.nbytes} bytes for a {dtype} tensor of shape {list(shape)}, which needs "
                  f"{expected}")
    return meta


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(file: Path, metas: list[TensorMeta], data_start: int, size: int) -> None:
    """Byte ranges must follow each other without gaps or overlaps and end at the file's end."""
    end, previous = data_start, None
    for meta in sorted(metas, key=lambda m: (m.offset, m.nbytes)):
        if meta.offset != end:
            what = (f"its bytes overlap tensor {previous.name!r}" if meta.offset < end
                    else f"{meta.offset - end} unused bytes before it")
            raise CheckpointError(f"{file}: tensor {meta.name!r}: corrupt header ({what})")
        end, previous = end + meta.nbytes, meta
    if end > size:
        last = max(metas, key=lambda m: m.offset + m.nbytes)
        raise CheckpointError(f"{file}: tensor {last.name!r} lies past the end of the file "
                              f"(truncated: {end - size} bytes missing)")
    if end < size:
        raise CheckpointError(f"{file}: {size - end} unexpected bytes after the last tensor "
                              "(corrupt, or not written by a safetensors writer)")


def read_bin_header(file: Path) -> list[TensorMeta]:
    """Index a pickle checkpoint with `weights_only=True` (tensors and plain containers only)."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({exc})") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{file}: not a state dict (tensor name → tensor)")
    return [  # offset -1: read by name through torch; nbytes as in a safetensors file
        TensorMeta(name, file, str(t.dtype).removeprefix("torch."), tuple(t.shape), -1,
                   t.numel() * t.element_size())
        for name, t in state.items()
    ]


class TensorReader:
    """Reads single tensors into fresh, owned buffers (see the module docstring).

    `check_finite`: a float tensor holding NaN or Inf is an error naming file and tensor (one
    extra reduction per tensor; turned off by `--allow-nonfinite`).
    """

    def __init__(self, check_finite: bool = True) -> None:
        self._handles: dict[Path, Any] = {}
        self._opening = threading.Lock()  # reads may come from several threads
        self.check_finite = check_finite

    def read(self, meta: TensorMeta, rows: tuple[int, int] | None = None, out=None):
        """The tensor, or only `rows` = (start, stop) of its first dimension (consecutive rows are
        consecutive bytes: one positioned read).

        `out`: a uint8 buffer of at least the bytes read, which the caller reuses from call to
        call (no fresh pages to fault in); the result is a view of it. Default: a fresh buffer.
        """
        handle = self._handle(meta.file)
        try:
            if is_pickle(meta.file):
                tensor = _rows_of(handle[meta.name], rows)
                tensor = _into(out, tensor) if out is not None else tensor.clone()
            else:
                tensor = _read_at(handle, meta, rows, out)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{meta.file}: cannot read tensor {meta.name!r} ({exc})") from exc
        if self.check_finite and meta.dtype in FLOAT_DTYPES:
            _check_finite(tensor, meta)
        return tensor

    def read_array(self, meta: TensorMeta, rows: tuple[int, int] | None = None, out=None):
        """As `read`, as a numpy array (torch is not imported; `out`: a numpy uint8 buffer).
        bfloat16 and float8 come as their bits (see `prefkit.io.arrays`). Safetensors files only."""
        import numpy as np  # here: `prefkit validate` reads headers and starts without it

        from prefkit.io import arrays

        if is_pickle(meta.file):
            raise CheckpointError(f"{meta.file}: pickle files are read through torch, not numpy")
        handle = self._handle(meta.file)
        shape, offset, nbytes = _extent(meta, rows)
        buffer = np.empty(nbytes, np.uint8) if out is None else out[:nbytes]
        try:
            _pread(handle, meta, buffer, offset)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{meta.file}: cannot read tensor {meta.name!r} ({exc})") from exc
        array = arrays.view(buffer, meta.dtype, shape)
        if self.check_finite and meta.dtype in FLOAT_DTYPES:
            _report_nonfinite(arrays.nonfinite(array, meta.dtype), meta)
        return array

    def _handle(self, file: Path):
        handle = self._handles.get(file)
        if handle is None:
            with self._opening:
                handle = self._handles.get(file) or self._open(file)
                self._handles[file] = handle
        return handle

    @staticmethod
    def _open(file: Path):
        try:
            if is_pickle(file):
                import torch

                return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            return open(file, "rb", buffering=0)
        except Exception as exc:
            raise CheckpointError(f"{file}: cannot open ({exc})") from exc

    def close(self) -> None:
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        self._handles.clear()


def _check_finite(tensor, meta: TensorMeta) -> None:
    import torch

    # A float32 sum is one fast pass and is NaN/Inf whenever an entry is; only then (or when
    # finite values overflow it) are the entries counted exactly.
    if meta.dtype.startswith("float8"):
        tensor = tensor.float()
    if torch.isfinite(tensor.sum(dtype=torch.float64 if meta.dtype == "float64" else torch.float32)):
        return
    _report_nonfinite(int((~torch.isfinite(tensor)).sum()), meta)


def _report_nonfinite(bad: int, meta: TensorMeta) -> None:
    if bad:
        raise CheckpointError(
            f"{meta.file}: tensor {meta.name!r} holds {bad} NaN/Inf value(s)",
            hint="the checkpoint is damaged or diverged in training; pass --allow-nonfinite to "
            "merge it anyway")


def _rows_of(tensor, rows: tuple[int, int] | None):
    return tensor if rows is None else tensor[rows[0]:rows[1]]


def _into(out, tensor):
    """Copy `tensor` into the front of the uint8 buffer `out`; returns the view."""
    view = out[:tensor.numel() * tensor.element_size()].view(tensor.dtype).view(tensor.shape)
    return view.copy_(tensor)


def _read_at(fh, meta: TensorMeta, rows: tuple[int, int] | None = None, out=None):
    import torch

    shape, offset, nbytes = _extent(meta, rows)
    buffer = torch.empty(nbytes, dtype=torch.uint8) if out is None else out[:nbytes]
    _pread(fh, meta, buffer.numpy(), offset)
    dtype = getattr(torch, meta.dtype)
    return buffer.view(dtype).reshape(shape)


def _extent(meta: TensorMeta, rows: tuple[int, int] | None) -> tuple[tuple[int, ...], int, int]:
    """(shape, file offset, bytes) of the tensor, or of `rows` of its first dimension."""
    shape, offset, nbytes = meta.shape, meta.offset, meta.nbytes
    if rows is not None:
        row_bytes = meta.nbytes // shape[0] if shape[0] else 0
        shape = (rows[1] - rows[0], *shape[1:])
        offset, nbytes = offset + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
    return shape, offset, nbytes


def _pread(fh, meta: TensorMeta, buffer, offset: int) -> None:
    """Fill the uint8 numpy `buffer` from the file at `offset` (positioned reads, no seek)."""
    view, nbytes = memoryview(buffer), len(buffer)
    done = 0
    while done < nbytes:
        got = os.preadv(fh.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise CheckpointError(f"{meta.file}: tensor {meta.name!r} is truncated "
                                  "(the file shrank after it was indexed)")
        done += got
