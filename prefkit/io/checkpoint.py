"""Checkpoint index and lazy tensor reader.

A checkpoint is a folder with `model.safetensors`, or shards listed by
`model.safetensors.index.json`, plus `config.json`. Only headers are read to build the index.

Tensor bytes are read one tensor at a time with positioned reads (`readinto` at the offset the
header gives) into a fresh buffer the caller owns. We chose this over `safe_open`'s memory map:
the map's touched pages stay in the process's resident set for as long as the handle is open (so
RSS grows to the size of every input), and its tensors are views a method must not write to. An
owned buffer is freed when the merge of its tensor group ends and can serve as scratch space.
PyTorch `.bin` checkpoints (many older hub models, e.g. the textattack ones) are read with
`torch.load(mmap=True, weights_only=True)`, which maps the file instead of loading it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError

SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


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
    def open(cls, path: Path) -> Checkpoint:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a checkpoint folder")
        files = _weight_files(path)
        tensors: dict[str, TensorMeta] = {}
        for file in files:
            metas = read_bin_header(file) if file.suffix == ".bin" else read_safetensors_header(file)
            for meta in metas:
                if meta.name in tensors:
                    raise CheckpointError(
                        f"{path}: tensor {meta.name!r} is in both {tensors[meta.name].file.name} "
                        f"and {file.name}"
                    )
                tensors[meta.name] = meta
        return cls(path, tensors, _read_config(path))


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) that do not exist: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise CheckpointError(
        f"{path}: no model.safetensors, safetensors index or pytorch_model.bin found",
        hint="point the recipe at a folder saved with save_pretrained()",
    )


def _read_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json"
    if not config.exists():
        return None
    try:
        return json.loads(config.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config}: invalid JSON ({exc})") from exc


def read_safetensors_header(file: Path) -> list[TensorMeta]:
    """Parse a safetensors header (8-byte little-endian length + JSON) without reading tensors."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file (no header)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(f"{file}: safetensors header of {length} bytes is not plausible")
            raw = fh.read(length)
            fh.seek(0, 2)
            size = fh.tell()
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror})") from exc
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header ({exc})") from exc
    data_bytes = size - 8 - length
    metas = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        if end > data_bytes:
            raise CheckpointError(f"{file}: tensor {name!r} lies past the end of the file (truncated?)")
        metas.append(TensorMeta(name, file, dtype, tuple(info["shape"]), 8 + length + start,
                                end - start))
    return metas


def read_bin_header(file: Path) -> list[TensorMeta]:
    import torch

    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles
        raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({exc})") from exc
    return [
        TensorMeta(name, file, str(t.dtype).removeprefix("torch."), tuple(t.shape))
        for name, t in state.items()
    ]


class TensorReader:
    """Reads single tensors into fresh, owned buffers (see the module docstring)."""

    def __init__(self) -> None:
        self._handles: dict[Path, Any] = {}

    def read(self, meta: TensorMeta):
        handle = self._handles.get(meta.file)
        if handle is None:
            handle = self._open(meta.file)
            self._handles[meta.file] = handle
        try:
            if meta.file.suffix == ".bin":
                return handle[meta.name].clone()
            return _read_at(handle, meta)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{meta.file}: cannot read tensor {meta.name!r} ({exc})") from exc

    @staticmethod
    def _open(file: Path):
        import torch

        try:
            if file.suffix == ".bin":
                return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            return open(file, "rb", buffering=0)
        except Exception as exc:
            raise CheckpointError(f"{file}: cannot open ({exc})") from exc

    def close(self) -> None:
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        self._handles.clear()


def _read_at(fh, meta: TensorMeta):
    import torch

    buffer = torch.empty(meta.nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    done = 0
    while done < meta.nbytes:
        got = os.preadv(fh.fileno(), [view[done:]], meta.offset + done)
        if got <= 0:
            raise CheckpointError(f"{meta.file}: tensor {meta.name!r} is truncated")
        done += got
    dtype = getattr(torch, meta.dtype)
    return buffer.view(dtype).reshape(meta.shape)
