"""Lazy tensor reader: one tensor (or rows of it) at a time, into a buffer the caller owns.

Tensor bytes are read one tensor at a time with positioned reads (`readinto` at the offset the
header gives) into a fresh buffer the caller owns. We chose this over `safe_open`'s memory map:
the map's touched pages stay in the process's resident set for as long as the handle is open (so
RSS grows to the size of every input), and its tensors are views a method must not write to. An
owned buffer is freed when the merge of its tensor group ends and can serve as scratch space.
Pickle files (allowed by the caller) are read through `torch.load(mmap=True, weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.damage import CheckpointFileError
from prefkit.io.dtypes import FLOAT_DTYPES
from prefkit.io.headers import TensorMeta, is_pickle
from prefkit.io.jsonfile import one_line, open_regular, os_error


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
        with _reading(meta):
            if is_pickle(meta.file):
                tensor = _rows_of(handle[meta.name], rows)
                tensor = _into(out, tensor) if out is not None else tensor.clone()
            else:
                tensor = _read_at(handle, meta, rows, out)
        if self.check_finite and meta.dtype in FLOAT_DTYPES:
            _check_finite(tensor, meta)
        return tensor

    def read_array(self, meta: TensorMeta, rows: tuple[int, int] | None = None, out=None):
        """As `read`, as a numpy array (torch is not imported; `out`: a numpy uint8 buffer).
        bfloat16 and float8 come as their bits (see `prefkit.io.arrays`). Safetensors files only."""
        import numpy as np  # here: `prefkit validate` reads headers and starts without it

        from prefkit.io import arrays

        if is_pickle(meta.file):
            raise CheckpointFileError(f"{meta.file}: pickle files are read through torch, not numpy")
        handle = self._handle(meta.file)
        shape, offset, nbytes = _extent(meta, rows)
        buffer = np.empty(nbytes, np.uint8) if out is None else out[:nbytes]
        with _reading(meta):
            _pread(handle, meta, buffer, offset)
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
        """A handle per input file, kept open until `close` (so a merge holds one file descriptor
        per input file: running out of them is one error line saying so, see `os_error`)."""
        if not is_pickle(file):
            return open_regular(file)
        try:
            import torch

            return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except OSError as exc:
            raise os_error(file, exc, "open") from exc
        except Exception as exc:
            raise CheckpointFileError(f"{file}: cannot open ({one_line(exc)})") from exc

    def close(self) -> None:
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        self._handles.clear()


def _read_error(meta: TensorMeta, exc: OSError) -> CheckpointFileError:
    return CheckpointFileError(f"{meta.file}: cannot read tensor {meta.name!r} "
                               f"({exc.strerror or one_line(exc)})",
                               hint="check the disk and the file, then run again")


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
        raise CheckpointFileError(
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
            raise CheckpointFileError(f"{meta.file}: tensor {meta.name!r} is truncated "
                                      "(the file shrank after it was indexed)")
        done += got


@contextlib.contextmanager
def _reading(meta: TensorMeta):
    """A failed read of `meta` as one CheckpointError naming the file and tensor."""
    try:
        yield
    except CheckpointError:
        raise
    except OSError as exc:
        raise _read_error(meta, exc) from exc
    except Exception as exc:
        raise CheckpointFileError(f"{meta.file}: cannot read tensor {meta.name!r} "
                                  f"({one_line(exc)})") from exc
