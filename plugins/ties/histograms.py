"""TIES's bit-pattern arithmetic: float32 bit patterns of magnitudes, their 2^15 high-bit and
2^16 low-bit histograms (searched with `prefkit.ops.bin_of_kth_largest`).

For non-negative floats, integer order of the bit patterns is value order, so the exact
selection (`selection.MagnitudeSelection`) and the cut-off (`cut`) count bits instead of
sorting. Owns the size of the fused kernels' histogram tasks (`histogram_part`) and the few
numpy-or-torch helpers the selection needs. The patterns themselves come from
`prefkit.ops.magnitude_bits` (shared with `prefkit.ops.topk_mask`).
"""

from __future__ import annotations

import math
import struct

import lazy_loader

from prefkit.ops import is_numpy, worker_count

torch = lazy_loader.load("torch")  # a TIES merge on numpy arrays never imports it


HISTOGRAM_PART = 1 << 21  # entries counted per task by the fused histograms at most


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
        import numpy as np

        high = np.right_shift(bits, 16, out=bits) if consume else bits >> 16
    else:
        high = bits.bitwise_right_shift_(16) if consume else bits >> 16
    return bincount(high, 1 << 15)


def low_histogram(bits: torch.Tensor, high_bin: int, *, consume: bool = False) -> torch.Tensor:
    """Counts of the 2^16 low-bit values among the patterns in one high-bit bin (`consume`: as
    for `high_histogram`)."""
    # Patterns below the bin land in the extra first count, those above in the extra last one:
    # no boolean indexing, which costs more than the histogram itself.
    offsets = bits.sub_((high_bin << 16) - 1) if consume else bits - ((high_bin << 16) - 1)
    return torch.bincount(offsets.clamp_(0, (1 << 16) + 1), minlength=(1 << 16) + 2)[1:-1]


def float_bits(value: float) -> int:
    """The int32 bit pattern of `value` rounded to float32 (as a float32 tensor's view)."""
    try:
        return struct.unpack("<i", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32's range: ±Inf, as the cast gives
        return struct.unpack("<i", struct.pack("<f", math.copysign(math.inf, value)))[0]


# What the exact selection needs of either library (numpy: TIES on numpy).


def cat(parts: list, like):
    """The parts end to end, in `like`'s library (int32 when there are none)."""
    if is_numpy(like):
        import numpy as np

        return np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)


def bincount(values, minlength: int):
    if is_numpy(values):
        import numpy as np

        return np.bincount(values, minlength=minlength)
    return torch.bincount(values, minlength=minlength)


def kth_smallest(values, k: int) -> int:
    """The k-th smallest (1-based) of integer `values`."""
    if is_numpy(values):
        import numpy as np

        return int(np.partition(values, k - 1)[k - 1])
    return int(torch.kthvalue(values.cpu(), k).values)
