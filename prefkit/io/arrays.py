"""Host arrays without torch: numpy views of the executor's buffers.

A method that declares `TensorMethod.takes_numpy` (linear, task arithmetic) gets numpy arrays on
the CPU, and its merge never imports torch: that import is 1.2-2.5 s of every merge's start-up
on this class of machine, more than the merge of a roberta-base set itself.

numpy has no bfloat16 (nor float8): a bfloat16 tensor is held here as its bits (uint16) and only
converted, to and from float32, with the rounding torch uses, so both paths write the same bytes.
Arithmetic in numpy is therefore only in float16/32/64 (`COMPUTABLE`).
"""

from __future__ import annotations

import math

import numpy as np

from prefkit.io.dtypes import ITEMSIZE

# dtype name (torch's spelling, as in plans and checkpoints) -> the numpy dtype that holds it
STORAGE = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": np.uint16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
    "bool": np.bool_, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8,
}
COMPUTABLE = frozenset({"float64", "float32", "float16"})  # numpy's own float arithmetic
CONVERTIBLE = COMPUTABLE | {"bfloat16"}  # what `convert` reads and writes
BF16_NAN = 0x7FC0  # torch's scalar conversion writes this quiet NaN for every NaN


def view(buffer: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The first bytes of the uint8 `buffer` as a `dtype` array of `shape`."""
    nbytes = ITEMSIZE[dtype] * math.prod(shape)
    return buffer[:nbytes].view(STORAGE[dtype]).reshape(shape)


def empty(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=STORAGE[dtype])


def convert(source: np.ndarray, source_dtype: str, out: np.ndarray, out_dtype: str) -> np.ndarray:
    """out[...] = source cast from `source_dtype` to `out_dtype` (both in `CONVERTIBLE`): IEEE
    round-to-nearest-even as torch's `copy_`, bfloat16 included. Returns `out`."""
    with quiet():  # overflow to ±Inf is the cast's meaning, as in torch: no warning
        return _convert(source, source_dtype, out, out_dtype)


def quiet():
    """numpy's floating-point warnings off (overflow, NaN from Inf - Inf): torch gives none."""
    return np.errstate(all="ignore")


def _convert(source, source_dtype: str, out, out_dtype: str):
    if source_dtype == out_dtype:
        np.copyto(out, source)
    elif source_dtype == "bfloat16":
        if out_dtype == "float32":
            np.left_shift(source, np.uint32(16), out=out.view(np.uint32))  # exact
        else:
            np.copyto(out, convert(source, source_dtype, empty("float32", source.shape), "float32"),
                      casting="same_kind")
    elif out_dtype == "bfloat16":
        if source_dtype != "float32":  # bf16 of a float32-rounded value: torch goes this way too
            source = source.astype(np.float32)
        _to_bfloat16(source, out)
    else:
        np.copyto(out, source, casting="same_kind")
    return out


def _to_bfloat16(source: np.ndarray, out: np.ndarray) -> None:
    """Round float32 to bfloat16 bits, to nearest even (c10::BFloat16's rounding)."""
    bits = source.view(np.uint32)
    wide = np.right_shift(bits, np.uint32(16))
    np.bitwise_and(wide, np.uint32(1), out=wide)  # the lowest kept bit breaks ties to even
    wide += np.uint32(0x7FFF)
    wide += bits
    wide >>= np.uint32(16)
    np.copyto(out, wide, casting="unsafe")  # < 2^16 after the shift
    out[np.isnan(source)] = BF16_NAN


def nonfinite(array: np.ndarray, dtype: str) -> int:
    """How many entries of a float `dtype` array are NaN or ±Inf."""
    if dtype == "bfloat16":  # exponent bits all ones
        return int(np.count_nonzero((array & 0x7F80) == 0x7F80))
    if dtype == "float8_e4m3fn":  # no infinities; NaN is S.1111.111
        return int(np.count_nonzero((array & 0x7F) == 0x7F))
    if dtype == "float8_e5m2":
        return int(np.count_nonzero((array & 0x7C) == 0x7C))
    # a sum is one fast pass, NaN/Inf whenever an entry is; only then are entries counted
    with quiet():
        if np.isfinite(array.sum(dtype=np.float64 if dtype == "float64" else np.float32)):
            return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))
