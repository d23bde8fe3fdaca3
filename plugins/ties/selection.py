"""TIES's exact selection: the k-th largest |x| of values that arrive in pieces
(`MagnitudeSelection`), a two-round radix select on float32 bit patterns (`histograms`), with
the fused kernels' prediction windows that usually spare the second round.

The cut-off of one tensor (`cut.magnitude_cut_point`) and of a whole task vector or a tensor's
slabs (the plugin's `_cuts`) are built on it.
"""

from __future__ import annotations

import threading

import lazy_loader

from prefkit.ops import (
    CHUNK,
    bin_of_kth_largest,
    bits_to_float,
    clone,
    is_numpy,
    magnitude_bits,
    map_chunks,
    numel,
    zeros,
)

from .fused import kernels_for
from .histograms import (
    bincount,
    cat,
    high_histogram,
    histogram_part,
    kth_smallest,
    low_histogram,
)

torch = lazy_loader.load("torch")  # a TIES merge on numpy arrays never imports it


PREDICT_MIN = 1 << 18  # a piece this large predicts the cut-off (round 1 keeps what is near)
WINDOW_BINS = 9  # high bins kept around the predicted one: ±4, about ±3% of its value
STREAMED_WINDOW_BINS = 3  # the same, around the first piece's exact bin (`streamed`)
MIXED_FLUSH = 1 << 18  # `mixed`: kept patterns are counted into the window's bins this often


class MagnitudeSelection:
    """Exact k-th largest |x| of values that arrive in pieces (chunks, slabs, whole tensors).

    A two-round radix select on float32 bit patterns (for non-negative floats, integer order is
    value order), so nothing is sorted and no piece is kept: round 1 (`add` before `choose`)
    counts the 2^15 high-bit bins; `choose(k)` finds the bin holding the k-th largest; round 2
    (`add` again, the same values in any order) counts the 2^16 low-bit values inside that bin.
    Up to `SMALL` values are simply kept and selected directly, with no second round (a
    histogram costs more than a sort of a LayerNorm's 768 values).

    With the fused kernels and `top_fraction` (k ≈ top_fraction × count, known in advance), the
    first large piece predicts the bin of the k-th largest from a sample, and round 1 also keeps
    the patterns in `WINDOW_BINS` bins around it: when the k-th largest lies among them (the
    usual case) `choose` finds it there and no second round is needed. `streamed` (many pieces
    of one distribution, e.g. the slabs of an embedding, whose kept patterns live until the
    last piece): the first piece's own k-th largest, counted exactly (one more pass over that
    piece alone), predicts so well that `STREAMED_WINDOW_BINS` bins suffice and little is kept.

    `mixed` (the tensors of a whole task vector: pieces of different distributions, too many to
    keep near a cut-off): the window follows a running prediction, and what lands in it is
    counted at once into 2^16 low counts per window bin (256 KiB each), noting the piece each
    bin's counts start at. The prediction is the first large piece's sample at first, then the
    cut-off of everything counted so far plus, with `total` (the values all pieces will bring),
    the rest expected to look like the latest PREDICT_MIN values (a task vector's layers are
    alike; its first tensors, heads and embeddings, often are not). When the k-th largest lies
    in a bin counted from the first piece, no second round is needed; counted from a later
    piece, the second round needs only the pieces before it (`rescan`).
    """

    SMALL = 1 << 16

    def __init__(self, top_fraction: float | None = None, *, streamed: bool = False,
                 mixed: bool = False, total: int | None = None) -> None:
        self.count = 0  # values seen in round 1
        self.top_fraction, self.streamed, self.total = top_fraction, streamed, total
        # `mixed`: high counts of the pieces since the last prediction, and how many values
        self._fresh: tuple[torch.Tensor | None, int] = (None, 0)
        self.rescan: int | None = None  # after choose(): round 2 needs only this many first pieces
        self._pieces = 0  # pieces added in this round
        # `mixed`: window bin -> [the piece its counts start at, its 2^16 low counts or None]
        self._lows: dict[int, list] | None = {} if mixed and top_fraction is not None else None
        self._early: torch.Tensor | None = None  # `mixed`: the patterns `_kept` held
        self._kept: list[torch.Tensor] | None = []  # bit patterns while count <= SMALL
        self._high: torch.Tensor | None = None
        self._low: torch.Tensor | None = None
        self._bin: tuple[int, int] | None = None  # (high bin, entries above it)
        self._round_two = False  # choose() asked for a second round
        self._found: tuple[float, int, int] | None = None
        self._window: tuple[int, int] = (0, 0)  # patterns [lo, hi) kept in round 1
        self._near: list[torch.Tensor] | None = []  # those patterns (None: some did not fit)

    def add(self, values: torch.Tensor) -> None:
        """Round 1 (before `choose`) or round 2 (after it asked for one) over these values."""
        self._add(values.reshape(-1), None)

    def add_task_vector(self, tensor: torch.Tensor, base: torch.Tensor) -> None:
        """`tensor -= base` (in place: the task vector τ), and `add(τ)`: in round 1 with the
        fused kernels, the subtraction and the counting are one pass."""
        round_one = self._bin is None and self._found is None
        fused = kernels_for(tensor, base)
        if fused is None or not round_one or self.count + numel(tensor) <= self.SMALL:
            tensor -= base
            self.add(tensor)
        else:
            self._add(tensor.reshape(-1), base.reshape(-1))

    def _add(self, flat: torch.Tensor, base: torch.Tensor | None) -> None:
        """`add`; `base` (round 1 with the kernels only): subtract it from `flat` first."""
        self._pieces += 1
        if self._bin is None and self._found is None:  # round 1
            self.count += numel(flat)
            if self._kept is not None and self.count <= self.SMALL:
                self._kept.append(clone(magnitude_bits(flat)))
                return
            self._count_kept()
            fused = kernels_for(flat)
            if fused is not None and self._lows is not None:
                self._count_mixed(fused, flat, base)
                return
            if fused is not None:
                self._count_fused(fused, flat, base)
                return
            self._near = self._lows = None
            for counts in map_chunks(lambda p: high_histogram(self._bits(flat[p]), consume=True),
                                     numel(flat)):
                self._high = _add(self._high, counts)
        elif self._round_two and (self.rescan is None or self._pieces <= self.rescan):
            high_bin = self._bin[0]
            fused = kernels_for(flat)
            if fused is not None:
                parts = map_chunks(lambda p: fused.low_counts(flat[p], high_bin), numel(flat),
                                   histogram_part(numel(flat)))
            else:
                parts = map_chunks(lambda p: low_histogram(self._bits(flat[p]), high_bin,
                                                           consume=True), numel(flat))
            for counts in parts:
                self._low = _add(self._low, counts)

    def _count_fused(self, fused, flat: torch.Tensor, base: torch.Tensor | None) -> None:
        if self._window == (0, 0) and self._near is not None:
            if self.top_fraction is None or numel(flat) < (self.SMALL if self.streamed
                                                             else PREDICT_MIN):
                self._near = None  # nothing to predict from: two rounds
            elif self.streamed:  # this piece's own cut-off, counted exactly, then kept around
                counts, _ = self._scan(fused, flat, base, (0, 0))  # (counted again below)
                self._window = self._around(counts, STREAMED_WINDOW_BINS)
                base = None  # flat holds τ now
            else:
                self._window = self._predict(flat, base)
        counts, near = self._scan(fused, flat, base, self._window)
        self._high = _add(self._high, counts)
        if self._near is not None and near is not None:
            self._near.extend(near)
        else:
            self._near = None

    def _count_mixed(self, fused, flat: torch.Tensor, base: torch.Tensor | None) -> None:
        piece = self._pieces - 1
        window = self._follow(flat, base)
        if window != self._window:
            self._flush()
            first = self._window == (0, 0)
            self._window = window
            since = 0 if first else piece  # the first window also counts what `_kept` held
            self._lows = {b: self._lows.get(b, [since, None]) for b in range(*_bins_of(window))}
            if first and self._early is not None:
                lo, hi = window
                self._near = [self._early[(self._early >= lo) & (self._early < hi)]]
            self._early = None
        counts, near = self._scan(fused, flat, base, self._window)
        fresh, values = self._fresh
        self._fresh = (clone(counts) if fresh is None else _add(fresh, counts)), values + numel(flat)
        self._high = _add(self._high, counts)
        if near is None:  # too many to keep: the window's counts start after this piece
            self._near = []
            self._lows = {b: [piece + 1, None] for b in self._lows}
            return
        self._near.extend(near)
        if sum(numel(n) for n in self._near) >= MIXED_FLUSH:
            self._flush()

    def _follow(self, flat: torch.Tensor, base: torch.Tensor | None) -> tuple[int, int]:
        """`mixed`: the window for this piece. The first one around the sample's prediction;
        once PREDICT_MIN values are counted, moved (only) when the predicted cut-off comes within
        a bin of its edge."""
        counted = self.count - numel(flat)
        if self._window == (0, 0):
            return self._predict(flat, base)
        fresh, latest = self._fresh
        if counted < PREDICT_MIN or latest < PREDICT_MIN:  # predict again after this many
            return self._window
        self._fresh = (None, 0)
        expected = self._high
        if self.total is not None and self.total > counted:  # the rest, like the latest pieces
            scale = (self.total - counted) / latest
            expected = (fresh.astype("float64") * scale + self._high if is_numpy(fresh)
                        else fresh.double().mul_(scale).add_(self._high))
        centre = self._centre(expected)
        lo, hi = _bins_of(self._window)
        return self._window if lo < centre < hi - 1 else _bins_around(centre, WINDOW_BINS)

    def _flush(self) -> None:
        """`mixed`: count the kept patterns into their window bins' low counts."""
        if not self._near:
            return
        lo, hi = _bins_of(self._window)
        kept = cat(self._near, self._near[0])
        kept -= lo << 16
        self._near = []
        counts = bincount(kept, (hi - lo) << 16).reshape(hi - lo, 1 << 16)
        # int32 (half the memory) while no count can overflow it: fewer than 2^31 values
        wide = self.total is None or self.total >= 1 << 31
        if not wide:
            counts = counts.astype("int32") if is_numpy(counts) else counts.to(torch.int32)
        for b in range(lo, hi):
            entry = self._lows[b]
            entry[1] = clone(counts[b - lo]) if entry[1] is None else _add(entry[1], counts[b - lo])

    @staticmethod
    def _scan(fused, flat: torch.Tensor, base: torch.Tensor | None, window: tuple[int, int]
              ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The fused round-1 pass over the merge's threads: high counts, and the patterns in
        `window` (None: more than the kept room lay there)."""
        parts = map_chunks(
            lambda p: fused.high_counts(flat[p], None if base is None else base[p], window),
            numel(flat), histogram_part(numel(flat)))
        nears = [near for _, near in parts]
        counts = sum((c for c, _ in parts[1:]), parts[0][0])
        return counts, (None if any(n is None for n in nears) else nears)

    def _centre(self, counts: torch.Tensor) -> int:
        """The high bin that holds the top `top_fraction` of the values `counts` counted."""
        total = round(float(counts.sum()))
        return bin_of_kth_largest(counts, min(total, max(1, round(self.top_fraction * total))))[0]

    def _around(self, counts: torch.Tensor, bins: int) -> tuple[int, int]:
        """The patterns [lo, hi) of `bins` high bins centred on `_centre(counts)`."""
        return _bins_around(self._centre(counts), bins)

    def _predict(self, flat: torch.Tensor, base: torch.Tensor | None) -> tuple[int, int]:
        """The patterns [lo, hi) of `WINDOW_BINS` high bins around the bin where a strided sample
        of 2^14 values puts the top `top_fraction`."""
        step = max(1, numel(flat) >> 14)
        sample = flat[::step] if base is None else flat[::step] - base[::step]
        bits = magnitude_bits(sample if is_numpy(sample) else sample.contiguous())
        rank = min(numel(bits), max(1, round(self.top_fraction * numel(bits))))
        predicted = kth_smallest(bits, numel(bits) - rank + 1) >> 16
        return _bins_around(predicted, WINDOW_BINS)

    def _count_kept(self) -> None:
        if self._kept and self._lows is not None:
            self._early = cat(self._kept, self._kept[0])  # `mixed`: counted into the first window
        for bits in self._kept or ():
            self._high = _add(self._high, high_histogram(bits, consume=True))
        self._kept = None

    def _bits(self, piece: torch.Tensor) -> torch.Tensor:
        """`magnitude_bits` of a chunk, into a buffer reused by the thread (no allocation per
        chunk)."""
        scratch = getattr(_scratch, "bits", None)
        if scratch is None or scratch.device != piece.device:
            scratch = _scratch.bits = torch.empty(CHUNK, dtype=torch.int32, device=piece.device)
        return magnitude_bits(piece, out=scratch[:piece.numel()])

    def choose(self, k: int) -> bool:
        """End round 1: the k-th largest (1 ≤ k ≤ count) is wanted. True when a second round
        over the same values is needed (else `add` ignores them)."""
        self._k = k
        if self._kept is not None:  # few values: select directly
            bits = cat(self._kept, self._kept[0])
            pattern = kth_smallest(bits, numel(bits) - k + 1)
            greater, equal = int((bits > pattern).sum()), int((bits == pattern).sum())
            self._found = (bits_to_float(pattern), greater, equal)
            return False
        self._bin = bin_of_kth_largest(self._high, k)
        if self._lows is not None:  # `mixed`
            self._flush()
            since, low = self._lows.get(self._bin[0], (None, None))
            self._low = None if low is None else (
                low.astype("int64") if is_numpy(low) else low.long())
            self._lows = self._early = self._near = None
            if since == 0:
                return False
            self._round_two, self._pieces, self.rescan = True, 0, since
            return True
        near, self._near = self._near, None
        lo, hi = self._window
        if near is not None and lo <= self._bin[0] << 16 < hi:  # round 1 kept its patterns
            kept = cat(near, self._high)
            in_bin = kept[(kept >> 16) == self._bin[0]]
            self._low = bincount(in_bin & 0xFFFF, 1 << 16)
            return False
        self._round_two = True
        return True

    def result(self) -> tuple[float, int, int]:
        """After the last round: the k-th largest |x|, how many entries are strictly greater,
        and how many equal it."""
        if self._found is None:
            high_bin, above = self._bin
            low = self._low if self._low is not None else zeros(self._high, 1 << 16, "int64")
            low_bits, greater = bin_of_kth_largest(low, self._k, above)
            self._found = (bits_to_float((high_bin << 16) | low_bits), greater, int(low[low_bits]))
        return self._found


def _bins_of(window: tuple[int, int]) -> tuple[int, int]:
    """The high bins [lo, hi) of a window of patterns."""
    return window[0] >> 16, window[1] >> 16


def _bins_around(centre: int, bins: int) -> tuple[int, int]:
    """The bit patterns [lo, hi) of `bins` high bins (of 2^15), half of them below `centre`."""
    lo = max(0, centre - bins // 2)
    return lo << 16, min(1 << 15, lo + bins) << 16


_scratch = threading.local()  # per thread: a chunk of int32 bit patterns


def _add(total: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
    if total is not None:
        total += counts
    return counts if total is None else total
