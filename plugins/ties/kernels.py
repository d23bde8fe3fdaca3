"""Fused CPU loops (C, `plugins/ties/_kernels.c`) for the passes of a TIES merge that eager torch
splits into many: ctypes wrappers, the extension's signatures, and its loading.

Counting a histogram of bit patterns and the per-chunk TIES merge (trim, scale, vote, disjoint
sum, divide, add the base) are each one loop here, where torch needs an operation (and a trip
through memory) per step. Every loop does the eager path's float32 operations in the same order,
so the results are the same bits; `tests/perf/test_kernels.py` compares the two paths. The
wrappers take torch tensors or numpy arrays (a TIES merge on numpy never imports torch).

Why C through ctypes and not numba: loading numba's compiled kernels costs about a second and
145 MB of resident memory (LLVM) in every merge process, more than the kernels save on a
roberta-base merge and over the 400 MB a merge may take. The extension is built by
`pip install` (setuptools, `optional`: without a C compiler it is skipped, and this module's
import fails, so `fused.kernels_for()` falls back to the eager path).
"""

from __future__ import annotations

import ctypes

from prefkit.ops import address, clone, load_library, numel, zeros

EXTENSION = "prefkit.plugins.ties._kernels"
_P, _N = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = {  # name: (argument types, result type)
    "prefkit_high_counts": ([_P, _P, _N, ctypes.c_uint32, ctypes.c_uint32, _P, _P, _N], _N),
    "prefkit_low_counts": ([_P, _N, ctypes.c_uint32, _P], None),
    "prefkit_ties_merge": ([_P, ctypes.c_int, _N, _P, _P, _P, ctypes.c_int, ctypes.c_int,
                            ctypes.c_float, _P, _P], ctypes.c_int),
}

_lib = load_library(EXTENSION, SIGNATURES)  # ImportError when not built: the eager path runs


KEPT_ROOM = 8  # at most 1/KEPT_ROOM of the values are kept near the predicted cut-off


# The wrappers take torch tensors or numpy arrays (flat, contiguous, float32, on the CPU) and
# answer in the same library.


def high_counts(values, base=None, window: tuple[int, int] = (0, 0)):
    """Round 1 of the exact selection over |values| (float32, flat, contiguous, CPU): counts of
    the 2^15 high-bit bins of their bit patterns (as `histograms.high_histogram` counts them),
    and the patterns in `window` = [lo, hi) (None when more than 1/KEPT_ROOM of the values lay
    there).
    With `base`, `values -= base` first, in place, in the same pass."""
    lo, hi = window
    n = numel(values)
    room = n // KEPT_ROOM if hi > lo else 0
    counts = zeros(values, 1 << 15, "int64")
    kept = zeros(values, room + 1, "int32", empty=True)  # + 1: the sink for what does not fit
    met = _lib.prefkit_high_counts(address(values), None if base is None else address(base),
                                   n, lo, hi, address(counts), address(kept), room)
    return counts, (clone(kept[:met]) if met <= room else None)


def low_counts(values, high_bin: int):
    """Counts of the 2^16 low-bit values of the patterns of |values| in bin `high_bin` (as
    `histograms.low_histogram` counts them, without a pass that forms the patterns first)."""
    counts = zeros(values, 1 << 16, "int64")
    _lib.prefkit_low_counts(address(values), numel(values), high_bin, address(counts))
    return counts


class TiesChunk:
    """The TIES merge of a chunk in one C loop over blocks that stay in L1 (the steps: the
    `prefkit.plugins.ties` docstring; `prefkit_ties_merge` in `_kernels.c`).

    `bounds[i]` is model i's hardshrink bound (`cut.MagnitudeCut.shrink_bound`; -inf keeps all),
    `ratios[i]` its rescale ratio (1: none), `weights[i]` its weight (each rounded to float32).
    """

    def __init__(self, bounds, ratios, weights, *, count: bool, normalize: bool, lambda_: float):
        floats = ctypes.c_float * len(weights)
        self.models = len(weights)
        self.bounds, self.ratios, self.weights = floats(*bounds), floats(*ratios), floats(*weights)
        self.count, self.normalize, self.lambda_ = int(count), int(normalize), lambda_

    def __call__(self, deltas: list, base, out) -> None:
        """Merge one chunk: `deltas` (flat contiguous float32 task vectors, left as they are),
        `base`, into `out` (may be `deltas[0]`)."""
        pointers = (ctypes.c_void_p * self.models)(*(address(d) for d in deltas))
        if _lib.prefkit_ties_merge(pointers, self.models, numel(base), self.bounds, self.ratios,
                                   self.weights, self.count, self.normalize, self.lambda_,
                                   address(base), address(out)):
            raise MemoryError("prefkit_ties_merge: no memory for its scratch")
