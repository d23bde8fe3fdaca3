"""Weight-file headers: what each tensor of a safetensors or pickle file is, and where.

A safetensors header (8-byte little-endian length + JSON) is parsed without reading tensors and
checked against the file: offsets that tile the data section exactly, byte counts that match
shape and dtype. A damaged or lying file is one error naming the file and the tensor.

Pickle checkpoints (`pytorch_model*.bin`, as many older hub models, e.g. the textattack ones, are
saved) can run code when loaded. They are read only when the caller allows it (`--allow-pickle`),
and then with `torch.load(mmap=True, weights_only=True)`, which refuses anything but tensors.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.dtypes import ITEMSIZE, SAFETENSORS_DTYPES

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


def is_pickle(file: Path) -> bool:
    return file.suffix in PICKLE_SUFFIXES


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
