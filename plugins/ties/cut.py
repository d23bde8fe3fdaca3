"""TIES's cut-off: where each task vector is trimmed, and the trim itself.

`magnitude_cut_point` and `task_vector_cut_point` find the exact k-th largest |τ| of a tensor in
memory (the fused passes of `selection.MagnitudeSelection` with the C loops, else one windowed
pass, `prefkit.ops.windowed_cut_point`, in the usual case); `MagnitudeCut` keeps the k largest
entries of a tensor or of a whole task vector met piece by piece, spending the ties at the
cut-off in flat order.
"""

from __future__ import annotations

import lazy_loader

from prefkit.ops import (
    bits_to_float,
    dtype_name,
    flat_magnitudes,
    is_numpy,
    map_chunks,
    numel,
    threshold_mask,
    windowed_cut_point,
)

from .fused import kernels_for
from .histograms import float_bits, histogram_part
from .selection import MagnitudeSelection

torch = lazy_loader.load("torch")  # a TIES merge on numpy arrays never imports it


def magnitude_cut_point(delta: torch.Tensor, k: int) -> tuple[float, int, int]:
    """Exact k-th largest |δ| of a tensor in memory (1 ≤ k ≤ numel), how many entries lie
    strictly above it and how many equal it.

    With the fused kernels, `MagnitudeSelection`'s fused passes. Else one histogram pass in the
    usual case: a strided sample of 2^16 entries predicts where the k-th largest lies, and one
    `bincount` counts every bit pattern in a window of 5 high-bit bins around it
    (`prefkit.ops.windowed_cut_point`, shared with `prefkit.ops.topk_mask`). When the k-th
    largest is outside the window, `MagnitudeSelection`'s two rounds find it.
    """
    flat = delta.reshape(-1)
    if numel(flat) > MagnitudeSelection.SMALL and kernels_for(flat) is None:  # else: fused passes
        found = windowed_cut_point(flat, k)
        if found is not None:
            return found
    selection = MagnitudeSelection(top_fraction=k / numel(flat))
    selection.add(flat)
    if selection.choose(k):
        selection.add(flat)
    return selection.result()


def task_vector_cut_point(tensor: torch.Tensor, base: torch.Tensor, k: int
                          ) -> tuple[float, int, int]:
    """`tensor -= base` in place (the task vector τ), then `magnitude_cut_point(τ, k)`. With the
    fused kernels the subtraction, the first histogram and the prediction of the cut-off are
    one pass, and usually the only one."""
    if kernels_for(tensor, base) is None or numel(tensor) <= MagnitudeSelection.SMALL:
        tensor -= base
        return magnitude_cut_point(tensor, k)
    selection = MagnitudeSelection(top_fraction=k / numel(tensor))
    selection.add_task_vector(tensor, base)
    if selection.choose(k):
        selection.add(tensor)
    return selection.result()


class MagnitudeCut:
    """Keeps the k entries of largest |δ| of a tensor (or of a whole task vector), met piece by
    piece in flat order: every entry above `threshold` (the k-th largest magnitude), and of the
    `equal` entries equal to it, the first `ties` (the lowest flat indices).

    Trimming is one comparison while the ties at the cut-off are all to be kept or none is (the
    usual case: one entry equals the k-th largest); only while some but not all of them are
    left does a piece look for them, spending `ties` and `equal` as it goes.
    """

    def __init__(self, threshold: float, ties: int, equal: int):
        self.threshold, self.ties, self.equal = threshold, ties, equal

    @classmethod
    def keep(cls, selection: MagnitudeSelection, k: int) -> MagnitudeCut:
        """The cut keeping the k largest of what `selection` saw (after its last round)."""
        threshold, greater, equal = selection.result()
        return cls(threshold, k - greater, equal)

    @classmethod
    def nothing(cls) -> MagnitudeCut:
        return cls(float("inf"), 0, 0)

    def ordered(self, dtype) -> bool:
        """Whether pieces must be trimmed in flat order (some ties at the cut-off are kept and
        some not: each piece spends the budget), or may be trimmed in any order (in parallel).
        `dtype`: torch's or numpy's."""
        dtype = dtype_name(dtype)
        if dtype != "float64" and (self.ties <= 0 or self.threshold == 0):
            return False
        return not (dtype == "float32" and self.ties >= self.equal)

    def shrink_bound(self, dtype) -> float:
        """λ such that `hardshrink(δ, λ)` (keeps |δ| > λ) is this cut's trim, for a cut that is
        not `ordered` (every entry equal to the threshold is kept, or none is)."""
        if dtype_name(dtype) != "float64" and (self.ties <= 0 or self.threshold == 0):
            return self.threshold
        return bits_to_float(float_bits(self.threshold) - 1)  # |δ| ≥ t is |δ| > t⁻

    def copy(self) -> MagnitudeCut:
        return MagnitudeCut(self.threshold, self.ties, self.equal)

    def split_off(self, delta: torch.Tensor) -> MagnitudeCut | None:
        """For an `ordered` cut and the next whole tensor (float32): when the tensor holds no
        more of the equal entries than the ties still left (all but one tensor, usually), spend
        them and return this tensor's own cut, which keeps all of them and needs no order;
        else None (trim it piece by piece in flat order). One counting pass over the merge's
        threads instead of a serial one."""
        if dtype_name(delta.dtype) != "float32":
            return None
        here = count_equal(delta, self.threshold)
        if here > self.ties:
            return None
        self.ties, self.equal = self.ties - here, self.equal - here
        return MagnitudeCut(self.threshold, here, here)

    def trim_(self, delta: torch.Tensor) -> torch.Tensor:
        """Zero the entries of `delta` (the next piece, in place) that the cut drops."""
        # float64 entries are cut by their float32 magnitudes (as selected): only the mask does
        dtype = dtype_name(delta.dtype)
        if dtype != "float64" and (self.ties <= 0 or self.threshold == 0):
            return _hardshrink_(delta, self.threshold)  # keeps |δ| > t
        if dtype == "float32":
            # every equal entry from here on is kept, or at least every one in this piece
            here = 0 if self.ties >= self.equal else _count_equal(delta, self.threshold)
            if here <= self.ties:
                bound = self.shrink_bound(dtype)  # |δ| ≥ t, from the ties still left
                self.ties, self.equal = self.ties - here, self.equal - here
                return _hardshrink_(delta, bound)
        delta *= self.mask(delta)
        return delta

    def mask(self, delta: torch.Tensor) -> torch.Tensor:
        """The keep-mask of the next piece (spends the ties, as `trim_` does)."""
        mask, taken = threshold_mask(delta, self.threshold, self.ties)
        if self.ties > 0:
            self.equal -= _count_equal(delta, self.threshold)
        self.ties -= taken
        return mask


def _hardshrink_(delta, bound: float):
    """Zero, in place, the entries with -bound ≤ δ ≤ bound (torch's hardshrink: NaN stays)."""
    if not is_numpy(delta):
        return torch.hardshrink(delta, bound, out=delta)
    bound = delta.dtype.type(bound)  # as torch casts its λ
    delta[(delta >= -bound) & (delta <= bound)] = 0
    return delta


def _count_equal(delta: torch.Tensor, threshold: float) -> int:
    mag = flat_magnitudes(delta)
    return int(((mag if is_numpy(mag) else mag.float()) == threshold).sum())


def count_equal(delta: torch.Tensor, threshold: float) -> int:
    """How many |δ| (float32) equal `threshold`, counted on the merge's threads (with the fused
    kernels: the low counts of the threshold's high bin)."""
    flat = delta.reshape(-1)
    fused = kernels_for(flat)
    if fused is None:
        return sum(map_chunks(lambda p: _count_equal(flat[p], threshold), numel(flat)))
    pattern = float_bits(threshold)
    parts = map_chunks(lambda p: fused.low_counts(flat[p], pattern >> 16), numel(flat),
                       histogram_part(numel(flat)))
    return sum(int(counts[pattern & 0xFFFF]) for counts in parts)
