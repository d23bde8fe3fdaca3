"""Weight-file headers: what each tensor of a safetensors or pickle file is, and where.

A safetensors header (8-byte little-endian length + JSON) is parsed without reading tensors and
checked against the file: offsets that tile the data section exactly, byte counts that match
shape and dtype. Every value is checked for type and range before use: the header's length (at
most MAX_HEADER_BYTES) and nesting (`prefkit.io.jsonfile`), tensor names (printable, at most
MAX_NAME characters), dtypes (the safetensors names), shapes (at most MAX_DIMS non-negative
integers, each at most MAX_EXTENT) and offsets. A damaged or lying file is one error naming the
file and the tensor.

Pickle checkpoints (`pytorch_model*.bin`, as many older hub models, e.g. the textattack ones, are
saved) can run code when loaded. They are read only when the caller allows it (`--allow-pickle`),
and then with `torch.load(mmap=True, weights_only=True)`, which refuses anything but tensors.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.io.damage import DAMAGED, CheckpointFileError
from prefkit.io.dtypes import ITEMSIZE, SAFETENSORS_DTYPES
from prefkit.io.jsonfile import (
    one_line,
    open_regular,
    os_error,
    parse_json,
    plain_text,
    size_text,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024
NOT_STATE_DICT = ("the file is not a plain state dict of tensors: convert the model to safetensors "
                  "where it was made, or ask its author for safetensors")
MAX_NAME = 1024  # characters of a tensor name (real ones have under 200)
MAX_DIMS = 16  # dimensions of a tensor (real ones have at most 5)
MAX_EXTENT = 2**62  # one dimension (torch and numpy index with int64)
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
    with open_regular(file) as fh:
        try:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointFileError(f"{file}: truncated safetensors file (no header)",
                                          hint=DAMAGED)
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise CheckpointFileError(f"{file}: safetensors header of {length} bytes is not "
                                          f"plausible (at most {size_text(MAX_HEADER_BYTES)})",
                                          hint="the file is not safetensors or is corrupt")
            raw = fh.read(length)
            size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise os_error(file, exc) from exc
    if len(raw) < length:
        raise CheckpointFileError(f"{file}: truncated safetensors file (header cut short)", hint=DAMAGED)
    header = parse_json(file, raw, "safetensors header", DAMAGED)
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{file}: corrupt safetensors header (not a JSON object)",
                                  hint=DAMAGED)
    _check_metadata(file, header.get("__metadata__"))
    metas = [_tensor_meta(file, name, info, 8 + length)
             for name, info in header.items() if name != "__metadata__"]
    _check_layout(file, metas, 8 + length, size)
    return metas


def check_name(file: Path, name: str, what: str = "tensor name") -> None:
    """A tensor name from a header or index: at most MAX_NAME characters of printable UTF-8."""
    if not name or len(name) > MAX_NAME:
        raise CheckpointFileError(f"{file}: {what} {name[:80]!r}{'...' if len(name) > 80 else ''} is "
                                  f"{'empty' if not name else f'{len(name)} characters long'} (1 to "
                                  f"{MAX_NAME} are allowed)", hint=DAMAGED)
    if not plain_text(name):
        raise CheckpointFileError(f"{file}: {what} {name!r} holds control or unencodable characters",
                                  hint=DAMAGED)


def _check_metadata(file: Path, metadata: Any) -> None:
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise CheckpointFileError(f"{file}: corrupt safetensors header (__metadata__ must map strings "
                                  "to strings)", hint=DAMAGED)


def _tensor_meta(file: Path, name: str, info: Any, data_start: int) -> TensorMeta:
    def bad(why: str) -> CheckpointFileError:
        return CheckpointFileError(f"{file}: tensor {name!r}: corrupt header entry ({why})",
                                   hint=DAMAGED)

    check_name(file, name)
    if not isinstance(info, dict):
        raise bad("not a JSON object")
    raw_dtype = info.get("dtype")
    dtype = SAFETENSORS_DTYPES.get(raw_dtype) if isinstance(raw_dtype, str) else None
    if dtype is None:
        raise CheckpointFileError(f"{file}: tensor {name!r} has unsupported dtype {_short(raw_dtype)}",
                                  hint=f"supported: {', '.join(sorted(SAFETENSORS_DTYPES))}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(_count(d) and d <= MAX_EXTENT for d in shape)):
        raise bad(f"shape {_short(shape)} is not a list of at most {MAX_DIMS} non-negative "
                  f"integers up to 2**62")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise bad(f"data_offsets {_short(offsets)} is not [begin, end]")
    meta = TensorMeta(name, file, dtype, tuple(shape), data_start + offsets[0],
                      offsets[1] - offsets[0])
    expected = meta.numel * ITEMSIZE[dtype]
    if meta.nbytes != expected:
        raise bad(f"{meta.nbytes} bytes for a {dtype} tensor of shape {list(shape)}, which needs "
                  f"{expected}")
    return meta


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(file: Path, metas: list[TensorMeta], data_start: int, size: int) -> None:
    """Byte ranges must follow each other without gaps or overlaps and end at the file's end."""
    end, previous = data_start, None
    for meta in sorted(metas, key=lambda m: (m.offset, m.nbytes)):
        if meta.offset != end:
            what = (f"its bytes overlap tensor {previous.name!r}" if meta.offset < end
                    else f"{meta.offset - end} unused bytes before it")
            raise CheckpointFileError(f"{file}: tensor {meta.name!r}: corrupt header ({what})",
                                      hint=DAMAGED)
        end, previous = end + meta.nbytes, meta
    if end > size:
        last = max(metas, key=lambda m: m.offset + m.nbytes)
        raise CheckpointFileError(f"{file}: tensor {last.name!r} lies past the end of the file "
                                  f"(truncated: {end - size} bytes missing)", hint=DAMAGED)
    if end < size:
        raise CheckpointFileError(f"{file}: {size - end} unexpected bytes after the last tensor "
                                  "(corrupt, or not written by a safetensors writer)", hint=DAMAGED)


def read_bin_header(file: Path) -> list[TensorMeta]:
    """Index a pickle checkpoint with `weights_only=True` (tensors and plain containers only)."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise CheckpointFileError(f"{file}: cannot read PyTorch checkpoint ({one_line(exc)})",
                                  hint=NOT_STATE_DICT) from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointFileError(f"{file}: not a state dict (tensor name → tensor)",
                                  hint=NOT_STATE_DICT)
    for name in state:
        check_name(file, name)
    return [  # offset -1: read by name through torch; nbytes as in a safetensors file
        TensorMeta(name, file, str(t.dtype).removeprefix("torch."), tuple(t.shape), -1,
                   t.numel() * t.element_size())
        for name, t in state.items()
    ]
