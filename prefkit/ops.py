"""Tensor building blocks shared by merge methods (public: third-party plugins may use them)."""

from __future__ import annotations

from collections.abc import Sequence

import lazy_loader

# torch is imported on first use, so `prefkit --help` and `validate` start fast.
torch = lazy_loader.load("torch")


def task_vectors_(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    """θ_i − θ_0 computed in place in the (owned) input buffers; returns them."""
    return [t.sub_(base) for t in tensors]


def accumulator(like: torch.Tensor) -> torch.Tensor:
    """A zeroed sum buffer: float32 for half dtypes (as torch's own sum accumulates), else alike."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    return torch.zeros(like.shape, dtype=dtype)


def scale_(tensor: torch.Tensor, weight: float) -> torch.Tensor:
    """Multiply in place by `weight` rounded to the tensor's dtype (as a weight tensor would be)."""
    return tensor.mul_(torch.tensor(weight, dtype=tensor.dtype))


def flat_magnitudes(delta: torch.Tensor) -> torch.Tensor:
    """|δ| flattened, in float32 (float64 stays float64) so selection is exact for half dtypes."""
    mag = delta.abs().reshape(-1)
    return mag if mag.dtype == torch.float64 else mag.float()


def magnitude_bits(delta: torch.Tensor) -> torch.Tensor:
    """|δ| as float32 bit patterns (int32, flat): for non-negative floats, integer order = value
    order, so exact selection can count bits instead of sorting."""
    return flat_magnitudes(delta).float().view(torch.int32)


def high_histogram(bits: torch.Tensor) -> torch.Tensor:
    """Counts of the 2^15 high-bit bins of non-negative float32 bit patterns."""
    return torch.bincount(bits >> 16, minlength=1 << 15)


def low_histogram(bits: torch.Tensor, high_bin: int) -> torch.Tensor:
    """Counts of the 2^16 low-bit values among the patterns in one high-bit bin."""
    return torch.bincount(bits[(bits >> 16) == high_bin] & 0xFFFF, minlength=1 << 16)


def bin_of_kth_largest(histogram: torch.Tensor, k: int, above: int = 0) -> tuple[int, int]:
    """The bin holding the k-th largest entry (1-based), and how many entries lie above it.

    `above` counts entries in higher bins already (for the second round of a radix select).
    """
    from_top = torch.flip(histogram, [0]).cumsum(0) + above
    index = int(torch.searchsorted(from_top, k))
    greater = int(from_top[index - 1]) if index > 0 else above
    return histogram.numel() - 1 - index, greater


def bits_to_float(pattern: int) -> float:
    return float(torch.tensor([pattern], dtype=torch.int32).view(torch.float32))


CHUNK = 1 << 20  # elements per chunk: large enough to amortise Python, small enough for cache


def chunks(n: int, size: int = CHUNK):
    """Slices covering range(n) in order, `size` elements each (the last may be shorter)."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class MagnitudeSelection:
    """Exact k-th largest |x| of values that arrive in pieces (chunks, slabs, whole tensors).

    A two-round radix select on float32 bit patterns (for non-negative floats, integer order is
    value order), so nothing is sorted and no piece is kept: round 1 (`add` before `choose`)
    counts the 2^15 high-bit bins; `choose(k)` finds the bin holding the k-th largest; round 2
    (`add` again, the same values in any order) counts the 2^16 low-bit values inside that bin.
    Up to `SMALL` values are simply kept and selected directly, with no second round (a
    histogram costs more than a sort of a LayerNorm's 768 values).
    """

    SMALL = 1 << 16

    def __init__(self) -> None:
        self.count = 0  # values seen in round 1
        self._kept: list[torch.Tensor] | None = []  # bit patterns while count <= SMALL
        self._high: torch.Tensor | None = None
        self._low: torch.Tensor | None = None
        self._bin: tuple[int, int] | None = None  # (high bin, entries above it)
        self._found: tuple[float, int, int] | None = None

    def add(self, values: torch.Tensor) -> None:
        flat = values.reshape(-1)
        if self._bin is None and self._found is None:  # round 1
            self.count += flat.numel()
            if self._kept is not None and self.count <= self.SMALL:
                self._kept.append(magnitude_bits(flat).clone())
                return
            for bits in [*(self._kept or ()), *(magnitude_bits(flat[p]) for p in chunks(flat.numel()))]:
                self._high = _add(self._high, high_histogram(bits))
            self._kept = None
        elif self._bin is not None:  # round 2
            for part in chunks(flat.numel()):
                self._low = _add(self._low, low_histogram(magnitude_bits(flat[part]), self._bin[0]))

    def choose(self, k: int) -> bool:
        """End round 1: the k-th largest (1 ≤ k ≤ count) is wanted. True when a second round
        over the same values is needed (else `add` ignores them)."""
        self._k = k
        if self._kept is not None:  # few values: select directly
            bits = torch.cat(self._kept)
            pattern = int(torch.kthvalue(bits.cpu(), bits.numel() - k + 1).values)
            greater, equal = int((bits > pattern).sum()), int((bits == pattern).sum())
            self._found = (bits_to_float(pattern), greater, equal)
            return False
        self._bin = bin_of_kth_largest(self._high, k)
        return True

    def result(self) -> tuple[float, int, int]:
        """After the last round: the k-th largest |x|, how many entries are strictly greater,
        and how many equal it."""
        if self._found is None:
            high_bin, above = self._bin
            low = self._low if self._low is not None else torch.zeros(1 << 16, dtype=torch.int64)
            low_bits, greater = bin_of_kth_largest(low, self._k, above)
            self._found = (bits_to_float((high_bin << 16) | low_bits), greater, int(low[low_bits]))
        return self._found


def _add(total: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
    return counts if total is None else total.add_(counts)


def kth_largest_magnitude(delta: torch.Tensor, k: int) -> tuple[float, int]:
    """Exact k-th largest |δ| (1 ≤ k ≤ numel) by `MagnitudeSelection` (no sort, no full-size
    temporaries), and the number of entries strictly above it."""
    selection = MagnitudeSelection()
    selection.add(delta)
    if selection.choose(k):
        selection.add(delta)
    threshold, greater, _ = selection.result()
    return threshold, greater


def topk_mask(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k entries of largest |δ|, found by exact selection (no full sort).

    Ties at the cut-off: every entry strictly above the k-th largest magnitude is kept, and of the
    entries equal to it, those with the lowest flat indices fill the remaining places.
    """
    n = delta.numel()
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    threshold, greater = kth_largest_magnitude(delta, k)
    return threshold_mask(delta, threshold, k - greater)[0]


def threshold_mask(delta: torch.Tensor, threshold: float, ties: int) -> tuple[torch.Tensor, int]:
    """|δ| > threshold, plus the first `ties` entries (lowest flat index) equal to it; also
    returns how many equal entries were taken."""
    mag = flat_magnitudes(delta).float()
    mask = mag > threshold
    taken = 0
    if ties > 0:
        equal = torch.nonzero(mag == threshold).flatten()[:ties]
        mask[equal] = True
        taken = equal.numel()
    return mask.reshape(delta.shape), taken


def elected_positive(deltas: Sequence[torch.Tensor], method: str = "sum") -> torch.Tensor:
    """TIES sign election over weighted task vectors: True where the elected sign is +.

    `sum`: the sign of Σ_i w_i δ̂_i (0 elects +). `count`: the sign held by more models (a tie
    elects +). Entries that are 0 never agree with either sign.
    """
    total = accumulator(deltas[0])
    if method == "sum":
        for d in deltas:
            total.add_(d)
    elif method == "count":
        for d in deltas:
            total.add_(d.sign())
    else:
        raise ValueError(f"consensus must be 'sum' or 'count', not {method!r}")
    return total.ge_(0).to(torch.bool)


def agrees(delta: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Where `delta` carries the elected sign (zeros never agree)."""
    return torch.where(positive, delta > 0, delta < 0)


def sign_consensus(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """The agreement mask for task vectors stacked on dim 0 (see `elected_positive`)."""
    positive = elected_positive(list(deltas), method)
    return torch.stack([agrees(d, positive) for d in deltas])
