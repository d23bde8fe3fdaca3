"""Fused CPU loops (C, `prefkit/_kernels.c`) for the passes of a TIES merge that eager torch
splits into many.

Counting a histogram of bit patterns and the per-chunk TIES merge (trim, scale, vote, disjoint
sum, divide, add the base) are each one loop here, where torch needs an operation (and a trip
through memory) per step. Every loop does the eager path's float32 operations in the same order,
so the results are the same bits; `tests/perf/test_kernels.py` compares the two paths.

Why C through ctypes and not numba: loading numba's compiled kernels costs about a second and
145 MB of resident memory (LLVM) in every merge process, more than the kernels save on a
roberta-base merge and over the 400 MB a merge may take. The extension is built by
`pip install` (setuptools, `optional`: without a C compiler it is skipped, and this module's
import fails, so `prefkit.ops.kernels()` falls back to the eager path).
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading

import torch

_spec = importlib.util.find_spec("prefkit._kernels")
if _spec is None or _spec.origin is None:
    raise ImportError("prefkit._kernels is not built (pip install needs a C compiler)")
_lib = ctypes.CDLL(_spec.origin)

_P, _N, _F, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_lib.prefkit_high_counts.argtypes = [_P, _N, _P]
_lib.prefkit_low_counts.argtypes = [_P, _N, ctypes.c_uint32, _P]
_lib.prefkit_ties_trim_vote.argtypes = [_P, _N, _F, _F, _F, _P, _I]
_lib.prefkit_ties_disjoint_add.argtypes = [_P, _N, _P, _F, _P, _P, _I]
_lib.prefkit_ties_finish.argtypes = [_P, _P, _P, _N, _F, _P, _P]
for _function in (_lib.prefkit_high_counts, _lib.prefkit_low_counts, _lib.prefkit_ties_trim_vote,
                  _lib.prefkit_ties_disjoint_add, _lib.prefkit_ties_finish):
    _function.restype = None


def magnitude_counts(values: torch.Tensor, high_bin: int | None = None) -> torch.Tensor:
    """Counts of |values| (float32, flat, contiguous, CPU) by bit pattern: the 2^15 high-bit
    bins (`high_bin` None), or the 2^16 low-bit values of the patterns in bin `high_bin` (as
    `ops.high_histogram` and `ops.low_histogram` count them, without a pass that forms the
    patterns first)."""
    if high_bin is None:
        counts = torch.zeros(1 << 15, dtype=torch.int64)
        _lib.prefkit_high_counts(values.data_ptr(), values.numel(), counts.data_ptr())
    else:
        counts = torch.zeros(1 << 16, dtype=torch.int64)
        _lib.prefkit_low_counts(values.data_ptr(), values.numel(), high_bin, counts.data_ptr())
    return counts


class TiesChunk:
    """The TIES merge of one chunk in one loop per model and step (see `plugins/ties.py`).

    `bounds[i]` is model i's hardshrink bound (`MagnitudeCut.shrink_bound`; -inf keeps all),
    `ratios[i]` its rescale ratio (1: none), `weights[i]` its weight (each rounded to float32).
    """

    def __init__(self, bounds, ratios, weights, *, count: bool, normalize: bool, lambda_: float):
        self.models = list(zip(bounds, ratios, weights))
        self.count, self.normalize, self.lambda_ = int(count), int(normalize), lambda_

    def __call__(self, deltas: list[torch.Tensor], base: torch.Tensor, out: torch.Tensor) -> None:
        """Merge one chunk: `deltas` (flat contiguous float32; trimmed and scaled in place),
        `base`, and `out` (may be `deltas[0]`)."""
        n = base.numel()
        scratch = _scratch_of_thread(n)
        scratch[:, :n] = 0
        votes, total, divisor = (row.data_ptr() for row in scratch)
        for delta, (bound, ratio, weight) in zip(deltas, self.models):
            _lib.prefkit_ties_trim_vote(delta.data_ptr(), n, bound, ratio, weight, votes,
                                        self.count)
        for delta, (_, _, weight) in zip(deltas, self.models):
            _lib.prefkit_ties_disjoint_add(delta.data_ptr(), n, votes, weight, total, divisor,
                                           self.normalize)
        _lib.prefkit_ties_finish(total, votes, divisor, n, self.lambda_, base.data_ptr(),
                                 out.data_ptr())


_thread = threading.local()


def _scratch_of_thread(n: int) -> torch.Tensor:
    """Votes, sums and divisors of a chunk: one buffer per thread, reused (no pages faulted in
    per chunk)."""
    scratch = getattr(_thread, "scratch", None)
    if scratch is None or scratch.shape[1] < n:
        scratch = _thread.scratch = torch.empty((3, n), dtype=torch.float32)
    return scratch
