"""What prefkit's code needs of a torch tensor or a numpy array alike (the numpy merges:
`TensorMethod.takes_numpy`), importing neither library until one is asked for."""

from __future__ import annotations


def is_numpy(array) -> bool:
    """Whether `array` is numpy's (an ndarray or a numpy scalar), not torch's."""
    return type(array).__module__ == "numpy"


def numel(array) -> int:
    return array.size if is_numpy(array) else array.numel()


def address(array) -> int:
    """Where the first entry is in memory."""
    return array.ctypes.data if is_numpy(array) else array.data_ptr()


def clone(array):
    return array.copy() if is_numpy(array) else array.clone()


def zeros(like, n: int, dtype: str, *, empty: bool = False):
    """n zeros (or, `empty`, uninitialised entries) of `dtype` ("int64", ...), in `like`'s library."""
    if is_numpy(like):
        import numpy as np

        return (np.empty if empty else np.zeros)(n, dtype)
    import torch

    return (torch.empty if empty else torch.zeros)(n, dtype=getattr(torch, dtype))


def dtype_name(dtype) -> str:
    """"float32" for torch.float32 and numpy's float32 alike."""
    return str(dtype).removeprefix("torch.")
