"""Tensor building blocks shared by merge methods (public: third-party plugins may use them)."""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Sequence

import lazy_loader

from prefkit.engine.tensorlike import clone, dtype_name, is_numpy, numel, zeros
from prefkit.engine.threads import CHUNK, chunks, map_chunks, merge_threads, worker_count  # noqa: F401 (for methods)

# torch is imported on first use, so `prefkit --help` and `validate` start fast.
torch = lazy_loader.load("torch")


# The helpers down to `weight_sum` take torch tensors or numpy arrays alike (for methods that
# declare `takes_numpy`), with the same bits: numpy follows torch's scalar rules here.


def task_vectors_(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    """θ_i − θ_0 computed in place in the (owned) input buffers; returns them."""
    for t in tensors:
        t -= base
    return list(tensors)


def accumulator(like: torch.Tensor) -> torch.Tensor:
    """A zeroed sum buffer: float32 for half dtypes (as torch's own sum accumulates), else alike."""
    if is_numpy(like):
        np = _numpy()
        return np.zeros(like.shape, np.float32 if like.dtype == np.float16 else like.dtype)
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    return torch.zeros(like.shape, dtype=dtype, device=like.device)


def scale_(tensor: torch.Tensor, weight: float) -> torch.Tensor:
    """Multiply in place by `weight` rounded to the tensor's dtype (as a weight tensor would be)."""
    if is_numpy(tensor):
        tensor *= tensor.dtype.type(weight)
        return tensor
    return tensor.mul_(torch.tensor(weight, dtype=tensor.dtype))


def mul_scalar_(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """tensor *= value, a Python float: as torch computes it, in float32 for half dtypes (the
    value is not first rounded to the tensor's dtype) and rounded once to it."""
    if is_numpy(tensor):
        np = _numpy()
        wide = np.float32 if tensor.dtype == np.float16 else tensor.dtype.type
        np.multiply(tensor, wide(value), out=tensor, casting="same_kind")
        return tensor
    return tensor.mul_(value)


def add_product_(acc: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    """acc += x · weight in one rounding (fused, as torch's `addcmul_`, which mergekit's linear
    uses), with x cast and `weight` rounded to acc's float32 or float64. numpy has no fused
    multiply-add: numpy arrays take the C extension's loop (`fused_multiply_add()`)."""
    if not is_numpy(acc):
        return acc.addcmul_(x, torch.tensor(weight, dtype=acc.dtype))
    np = _numpy()
    x = np.ascontiguousarray(x, dtype=acc.dtype)
    if not acc.flags.c_contiguous:
        raise ValueError("add_product_ needs a contiguous accumulator")
    fused = fused_multiply_add(acc.dtype.name)
    if fused is None:
        raise RuntimeError("prefkit's C extension is not built: no fused multiply-add for numpy")
    fused(acc.ctypes.data, x.ctypes.data, weight, acc.size)
    return acc


def fused_multiply_add(dtype: str = "float32"):
    """The C loop `acc[i] = fma(x[i], w, acc[i])` for float32 or float64 arrays, or None when
    the extension is not built (a method that needs it then keeps torch: `takes_numpy`)."""
    from prefkit.clib import library

    lib = library()
    names = {"float32": "prefkit_fma_f32", "float64": "prefkit_fma_f64"}
    return None if lib is None or dtype not in names else getattr(lib, names[dtype])


def round_to(value: float, like: torch.Tensor) -> float:
    """`value` rounded to `like`'s dtype, as a weight tensor of that dtype would hold it."""
    if is_numpy(like):
        return float(like.dtype.type(value))
    return float(torch.tensor(value, dtype=like.dtype))


def cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` in `like`'s dtype (itself if it is already)."""
    if is_numpy(x):
        return x.astype(like.dtype, copy=False)
    return x.to(like.dtype)


def weight_sum(weights: Sequence[float], like: torch.Tensor):
    """Σ weights as torch sums a `like`-dtype tensor of them (each weight rounded to the dtype,
    added in float32 for half dtypes and rounded back), but always in order: torch's own sum
    regroups five or more. A 0-dim tensor, or a numpy scalar for a numpy `like`."""
    if is_numpy(like):
        np = _numpy()
        wide = np.float32 if like.dtype == np.float16 else like.dtype.type
        total = wide(0)
        for weight in weights:
            total = wide(total + wide(like.dtype.type(weight)))
        return like.dtype.type(total)
    rounded = torch.tensor(list(weights), dtype=like.dtype)
    total = torch.zeros((), dtype=accumulator(rounded).dtype)
    for weight in rounded:
        total += weight
    return total.to(device=like.device, dtype=like.dtype)


def _numpy():
    import numpy

    return numpy


# What the exact selection and the TIES cut need of either library (numpy: TIES on numpy).


def _cat(parts: list, like):
    """The parts end to end, in `like`'s library (int32 when there are none)."""
    if is_numpy(like):
        np = _numpy()
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)


def _bincount(values, minlength: int):
    if is_numpy(values):
        return _numpy().bincount(values, minlength=minlength)
    return torch.bincount(values, minlength=minlength)


def _kth_smallest(values, k: int) -> int:
    """The k-th smallest (1-based) of integer `values`."""
    if is_numpy(values):
        return int(_numpy().partition(values, k - 1)[k - 1])
    return int(torch.kthvalue(values.cpu(), k).values)


def kernels_enabled() -> bool:
    """The C loops can run: built, and not turned off by `PREFKIT_KERNELS=torch`."""
    from prefkit.clib import library

    return os.environ.get("PREFKIT_KERNELS") != "torch" and library() is not None


def flat_magnitudes(delta: torch.Tensor) -> torch.Tensor:
    """|δ| flattened, in float32 (float64 stays float64) so selection is exact for half dtypes."""
    if is_numpy(delta):  # float32 (TIES merges numpy arrays only then)
        return _numpy().abs(delta).reshape(-1)
    mag = delta.abs().reshape(-1)
    return mag if mag.dtype == torch.float64 else mag.float()


def magnitude_bits(delta: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """|δ| as float32 bit patterns (int32, flat; into `out` when given): for non-negative floats,
    integer order = value order, so exact selection can count bits instead of sorting."""
    if is_numpy(delta):  # float32 (TIES merges numpy arrays only then)
        np = _numpy()
        bits = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1).view(np.int32)
        return np.bitwise_and(bits, 0x7FFFFFFF, out=out)
    if delta.dtype == torch.float32 and delta.is_contiguous():  # |δ| is δ without its sign bit
        return torch.bitwise_and(delta.reshape(-1).view(torch.int32), 0x7FFFFFFF, out=out)
    bits = flat_magnitudes(delta).float().view(torch.int32)
    return bits if out is None else out.copy_(bits)


def kernels(*tensors: torch.Tensor):
    """`prefkit.kernels` (fused C loops, the same bits as the eager torch ops) when every tensor
    is contiguous float32 on the CPU, the extension is built and `PREFKIT_KERNELS` is not
    `torch`; else None (use the eager torch path)."""
    if os.environ.get("PREFKIT_KERNELS") == "torch":
        return None
    if all(is_numpy(t) for t in tensors):
        np = _numpy()
        if not all(t.dtype == np.float32 and t.flags.c_contiguous for t in tensors):
            return None
    elif not all(not is_numpy(t) and t.dtype == torch.float32 and t.device.type == "cpu"
                 and t.is_contiguous() for t in tensors):
        return None
    try:
        from prefkit import kernels as module
    except ImportError:  # not built (no C compiler at install): the eager path merges alike
        return None
    return module


HISTOGRAM_PART = 1 << 21  # entries counted per task by the fused histograms at most
PREDICT_MIN = 1 << 18  # a piece this large predicts the cut-off (round 1 keeps what is near)
WINDOW_BINS = 9  # high bins kept around the predicted one: ±4, about ±3% of its value
STREAMED_WINDOW_BINS = 3  # the same, around the first piece's exact bin (`streamed`)
MIXED_FLUSH = 1 << 18  # `mixed`: kept patterns are counted into the window's bins this often


def histogram_part(n: int) -> int:
    """Entries per task when the fused kernels histogram n values: tasks of equal size, one per
    merge thread at least (a 2.4M-entry matrix is not 2M on one thread and 0.4M on the other),
    at most HISTOGRAM_PART each (every task zeroes and sums its own 2^15 counts)."""
    tasks = max(-(-n // HISTOGRAM_PART), worker_count())
    return max(1 << 16, -(-n // tasks))


def high_histogram(bits: torch.Tensor, *, consume: bool = False) -> torch.Tensor:
    """Counts of the 2^15 high-bit bins of non-negative float32 bit patterns (`consume`: shift
    `bits`, a scratch buffer, in place instead of allocating)."""
    if is_numpy(bits):
        high = _numpy().right_shift(bits, 16, out=bits) if consume else bits >> 16
    else:
        high = bits.bitwise_right_shift_(16) if consume else bits >> 16
    return _bincount(high, 1 << 15)


def low_histogram(bits: torch.Tensor, high_bin: int, *, consume: bool = False) -> torch.Tensor:
    """Counts of the 2^16 low-bit values among the patterns in one high-bit bin (`consume`: as
    for `high_histogram`)."""
    # Patterns below the bin land in the extra first count, those above in the extra last one:
    # no boolean indexing, which costs more than the histogram itself.
    offsets = bits.sub_((high_bin << 16) - 1) if consume else bits - ((high_bin << 16) - 1)
    return torch.bincount(offsets.clamp_(0, (1 << 16) + 1), minlength=(1 << 16) + 2)[1:-1]


def bin_of_kth_largest(histogram: torch.Tensor, k: int, above: int = 0) -> tuple[int, int]:
    """The bin holding the k-th largest entry (1-based), and how many entries lie above it.

    `above` counts entries in higher bins already (for the second round of a radix select).
    """
    if is_numpy(histogram):
        np = _numpy()
        from_top = np.flip(histogram).cumsum() + above
        index = int(np.searchsorted(from_top, k))
    else:
        from_top = torch.flip(histogram, [0]).cumsum(0) + above
        index = int(torch.searchsorted(from_top, k))
    greater = int(from_top[index - 1]) if index > 0 else above
    return numel(histogram) - 1 - index, greater


def bits_to_float(pattern: int) -> float:
    """The float32 whose bit pattern is `pattern` (0 ≤ pattern < 2^32), as a Python float."""
    return struct.unpack("<f", struct.pack("<I", pattern & 0xFFFFFFFF))[0]


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
        fused = kernels(tensor, base)
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
            fused = kernels(flat)
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
            fused = kernels(flat)
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
        kept = _cat(self._near, self._near[0])
        kept -= lo << 16
        self._near = []
        counts = _bincount(kept, (hi - lo) << 16).reshape(hi - lo, 1 << 16)
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
        predicted = _kth_smallest(bits, numel(bits) - rank + 1) >> 16
        return _bins_around(predicted, WINDOW_BINS)

    def _count_kept(self) -> None:
        if self._kept and self._lows is not None:
            self._early = _cat(self._kept, self._kept[0])  # `mixed`: counted into the first window
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
            bits = _cat(self._kept, self._kept[0])
            pattern = _kth_smallest(bits, numel(bits) - k + 1)
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
            kept = _cat(near, self._high)
            in_bin = kept[(kept >> 16) == self._bin[0]]
            self._low = _bincount(in_bin & 0xFFFF, 1 << 16)
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


def kth_largest_magnitude(delta: torch.Tensor, k: int) -> tuple[float, int]:
    """Exact k-th largest |δ| (1 ≤ k ≤ numel), and the number of entries strictly above it."""
    threshold, greater, _ = magnitude_cut_point(delta, k)
    return threshold, greater


def magnitude_cut_point(delta: torch.Tensor, k: int) -> tuple[float, int, int]:
    """Exact k-th largest |δ| of a tensor in memory (1 ≤ k ≤ numel), how many entries lie
    strictly above it and how many equal it.

    One histogram pass in the usual case: a strided sample of 2^16 entries predicts where the
    k-th largest lies, and one `bincount` counts every bit pattern in a window of 5 high-bit bins
    around it (entries below and above the window in two more counts). When the k-th largest is
    outside the window, `MagnitudeSelection`'s two rounds find it.
    """
    flat = delta.reshape(-1)
    if numel(flat) > MagnitudeSelection.SMALL and kernels(flat) is None:  # else: fused passes
        found = _windowed_cut_point(flat, k)
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
    if kernels(tensor, base) is None or numel(tensor) <= MagnitudeSelection.SMALL:
        tensor -= base
        return magnitude_cut_point(tensor, k)
    selection = MagnitudeSelection(top_fraction=k / numel(tensor))
    selection.add_task_vector(tensor, base)
    if selection.choose(k):
        selection.add(tensor)
    return selection.result()


_WINDOW_BINS = 5  # wider windows miss less often, but their counts fall out of the CPU's caches


def _windowed_cut_point(flat: torch.Tensor, k: int) -> tuple[float, int, int] | None:
    n = flat.numel()
    sample = magnitude_bits(flat[:: n // (1 << 16)])
    rank = max(1, round(k * sample.numel() / n))  # the k-th largest's place in the sample
    predicted = int(torch.kthvalue(sample.cpu(), sample.numel() - rank + 1).values) >> 16
    low = max(0, predicted - _WINDOW_BINS // 2) << 16
    width = _WINDOW_BINS << 16
    offsets = torch.empty(n, dtype=torch.int32, device=flat.device)

    def place(part: slice) -> None:  # pattern − window start + 1; 0 below, width + 1 above
        magnitude_bits(flat[part], out=offsets[part]).sub_(low - 1).clamp_(0, width + 1)

    map_chunks(place, n)
    counts = torch.bincount(offsets, minlength=width + 2)
    above, below = int(counts[-1]), int(counts[0])
    if not above < k <= n - below:
        return None
    per_bin = counts[1:-1].view(_WINDOW_BINS, 1 << 16)  # find the high bin first: small sums
    high, above = bin_of_kth_largest(per_bin.sum(1), k, above)
    index, greater = bin_of_kth_largest(per_bin[high], k, above)
    return bits_to_float(low + (high << 16) + index), greater, int(per_bin[high, index])


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
    mag = flat_magnitudes(delta)
    mask = mag > threshold
    taken = 0
    if ties > 0:
        if is_numpy(mag):
            equal = _numpy().flatnonzero(mag == threshold)[:ties]
        else:
            equal = torch.nonzero(mag == threshold).flatten()[:ties]
        mask[equal] = True
        taken = numel(equal)
    return mask.reshape(delta.shape), taken


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
    fused = kernels(flat)
    if fused is None:
        return sum(map_chunks(lambda p: _count_equal(flat[p], threshold), numel(flat)))
    pattern = float_bits(threshold)
    parts = map_chunks(lambda p: fused.low_counts(flat[p], pattern >> 16), numel(flat),
                       histogram_part(numel(flat)))
    return sum(int(counts[pattern & 0xFFFF]) for counts in parts)


def float_bits(value: float) -> int:
    """The int32 bit pattern of `value` rounded to float32 (as a float32 tensor's view)."""
    try:
        return struct.unpack("<i", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32's range: ±Inf, as the cast gives
        return struct.unpack("<i", struct.pack("<f", math.copysign(math.inf, value)))[0]


def disjoint_mean(deltas: Sequence[torch.Tensor], votes: torch.Tensor,
                  weights: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TIES's disjoint merge of weighted task vectors: Σ_i δ_i [δ_i agrees with the elected sign]
    and, with `weights`, Σ_i w_i [δ_i agrees] (float32 sums for half dtypes; zeros never agree).
    `votes` is `sign_votes(deltas)`: the elected sign is + where it is ≥ 0.

    No boolean mask per model (slow on CPU): with s = ±1 the elected sign, max(s·δ_i, 0) is |δ_i|
    where δ_i agrees and 0 elsewhere, so s · Σ_i max(s·δ_i, 0) is the sum of the agreeing δ_i,
    added in model order as mergekit's `(δ · agree).sum(0)` adds them: the same bits, as negation
    is exact and rounding is symmetric. (Where s = -1 some δ_i < 0 agrees: no -0 comes out.)
    """
    ints = {torch.float32: torch.int32, torch.float64: torch.int64}[votes.dtype]
    sign_bit = votes.view(ints) >> (8 * votes.element_size() - 1)  # -1 where votes < 0, else 0
    elected = sign_bit.mul_(2).add_(1).to(votes.dtype)  # votes are sums from +0: never -0
    part = torch.empty_like(deltas[0])
    total = accumulator(deltas[0])
    divisor = accumulator(deltas[0]) if weights is not None else None
    for i, delta in enumerate(deltas):
        torch.mul(delta, elected, out=part).clamp_min_(0)  # |δ_i| where it agrees, else 0
        total.add_(part)
        if divisor is not None:
            divisor.add_(part.sign_(), alpha=weights[i])
    return total.mul_(elected), divisor


def nonzero_divisor_(divisor: torch.Tensor) -> torch.Tensor:
    """Replace zeros by 1 in place (`divisor[divisor == 0] = 1` without a boolean mask)."""
    is_zero = divisor.abs().sign_().neg_().add_(1)  # 1 where 0, 0 elsewhere (NaN stays NaN)
    return divisor.add_(is_zero)


def sign_votes(deltas: Sequence[torch.Tensor], method: str = "sum") -> torch.Tensor:
    """The TIES sign vote per entry (float32 for half dtypes): Σ_i w_i δ̂_i (`sum`) or Σ_i sign(δ̂_i)
    (`count`), summed from +0 in model order; the elected sign is + where it is ≥ 0."""
    total = accumulator(deltas[0])
    if method == "sum":
        for d in deltas:
            total.add_(d)
    elif method == "count":
        for d in deltas:
            total.add_(d.sign())
    else:
        raise ValueError(f"consensus must be 'sum' or 'count', not {method!r}")
    return total


def elected_positive(deltas: Sequence[torch.Tensor], method: str = "sum") -> torch.Tensor:
    """TIES sign election over weighted task vectors: True where the elected sign is +.

    `sum`: the sign of Σ_i w_i δ̂_i (0 elects +). `count`: the sign held by more models (a tie
    elects +). Entries that are 0 never agree with either sign.
    """
    return sign_votes(deltas, method).ge_(0).to(torch.bool)


def agrees(delta: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Where `delta` carries the elected sign (zeros never agree)."""
    return torch.where(positive, delta > 0, delta < 0)


def sign_consensus(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """The agreement mask for task vectors stacked on dim 0 (see `elected_positive`)."""
    positive = elected_positive(list(deltas), method)
    return torch.stack([agrees(d, positive) for d in deltas])
