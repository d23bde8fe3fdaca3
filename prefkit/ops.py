"""Tensor building blocks for merge methods: public, for third-party plugins as for the
built-ins, and only what more than one method (or a method yet to be written) needs. A method's
private machinery lives with the method (TIES's histograms, selection, cut-offs and C loops:
plugins/ties/).

Who uses what:

- `task_vectors_`: task arithmetic, TIES, AdaMerging (prefkit/train/adamerging.py) and the
  example DARE plugin (examples/prefkit-dare).
- `accumulator`, `weight_sum`: linear and task arithmetic; `scale_`: task arithmetic and TIES;
  `mul_scalar_`, `cast_like`: task arithmetic; `round_to`: TIES.
- `add_product_`, `fused_multiply_add`: linear (the C loop of prefkit/engine/_fma.c on numpy).
- `topk_mask`, `kth_largest_magnitude`: AdaMerging's trim (TIES finds the same cut-offs with its
  own streaming selection); `threshold_mask`, `windowed_cut_point`, `bin_of_kth_largest`,
  `flat_magnitudes`, `magnitude_bits`, `bits_to_float`: those and TIES's cut-offs.
- `elected_positive`, `agrees`: AdaMerging and DARE (dare_ties); `sign_votes`, `disjoint_mean`,
  `nonzero_divisor_`: TIES's eager merge; `sign_consensus`: on task vectors stacked on dim 0.
- `CHUNK`, `chunks`, `map_chunks`, `merge_threads`, `worker_count` (from prefkit/engine/threads.py):
  elementwise methods' chunks on the merge's threads (linear, task arithmetic, TIES).
- `is_numpy`, `numel`, `address`, `clone`, `zeros`, `dtype_name` (from
  prefkit/engine/tensorlike.py): methods that take numpy arrays as well as torch tensors
  (`takes_numpy`: TIES).
- `load_library`: a method's own optional C extension, through ctypes (TIES).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

import lazy_loader

from prefkit.engine.tensorlike import address, clone, dtype_name, is_numpy, numel, zeros  # noqa: F401 (for methods)
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


FMA_EXTENSION = "prefkit.engine._fma"  # prefkit/engine/_fma.c, built by setup.py (optional)


def fused_multiply_add(dtype: str = "float32"):
    """The C loop `acc[i] = fma(x[i], w, acc[i])` for float32 or float64 arrays, or None when
    the extension is not built (a method that needs it then keeps torch: `takes_numpy`)."""
    from prefkit.engine import clib

    lib = clib.library(FMA_EXTENSION, _fma_signatures())
    names = {"float32": "prefkit_fma_f32", "float64": "prefkit_fma_f64"}
    return None if lib is None or dtype not in names else getattr(lib, names[dtype])


@functools.cache
def _fma_signatures() -> dict:
    import ctypes

    pointer, n = ctypes.c_void_p, ctypes.c_int64
    return {"prefkit_fma_f32": ([pointer, pointer, ctypes.c_float, n], None),
            "prefkit_fma_f64": ([pointer, pointer, ctypes.c_double, n], None)}


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


# Magnitudes: the exact top-k by |δ|, selected on float32 bit patterns (for non-negative floats,
# integer order is value order, so selection needs no float comparisons: NaN lies above ∞).


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


def bits_to_float(pattern: int) -> float:
    """The float32 whose bit pattern is `pattern` (0 ≤ pattern < 2^32), as a Python float."""
    return struct.unpack("<f", struct.pack("<I", pattern & 0xFFFFFFFF))[0]


def kth_largest_magnitude(delta: torch.Tensor, k: int) -> tuple[float, int]:
    """Exact k-th largest |δ| (1 ≤ k ≤ numel), and the number of entries strictly above it.

    Selected on the float32 bit patterns of |δ| (`magnitude_bits`), in memory: one windowed pass
    in the usual case (`windowed_cut_point`), else one partial selection (no sort). TIES finds
    the same numbers with its own selection, which streams and keeps nothing
    (plugins/ties/selection.py)."""
    flat = delta.reshape(-1)
    if not is_numpy(flat) and numel(flat) > 1 << 16:
        found = windowed_cut_point(flat, k)
        if found is not None:
            return found[:2]
    bits = magnitude_bits(flat)
    n = numel(bits)
    if is_numpy(bits):
        pattern = int(_numpy().partition(bits, n - k)[n - k])
    else:
        pattern = int(torch.kthvalue(bits, n - k + 1).values)
    return bits_to_float(pattern), int((bits > pattern).sum())


_WINDOW_BINS = 5  # wider windows miss less often, but their counts fall out of the CPU's caches


def windowed_cut_point(flat: torch.Tensor, k: int) -> tuple[float, int, int] | None:
    """The exact k-th largest |x| of a flat torch tensor of more than 2^16 entries (1 ≤ k ≤
    numel), how many entries lie strictly above it and how many equal it, in one histogram
    pass; None when the k-th largest lies outside the window (then select it otherwise).

    A strided sample of 2^16 entries predicts where the k-th largest lies, and one `bincount`
    counts every bit pattern in a window of 5 high-bit bins around it (entries below and above
    the window in two more counts). Used by `kth_largest_magnitude` and by TIES's eager path.
    """
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


def load_library(module: str, signatures):
    """A method's own optional C extension (`module`, built by setup.py with `optional`), loaded
    with ctypes, every function in `signatures` ({name: (argument types, result type)}) set up;
    ImportError says why it cannot be used (not built: take the eager path). The loader is
    prefkit/engine/clib.py's; TIES loads its loops with it (plugins/ties/kernels.py)."""
    from prefkit.engine.clib import load_library as load

    return load(module, signatures)
