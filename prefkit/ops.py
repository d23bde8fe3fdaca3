"""Tensor building blocks shared by merge methods (public: third-party plugins may use them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_task_vectors(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return w_i · (θ_i − θ_0) stacked as (m, *shape), and the weights shaped to broadcast."""
    deltas = torch.stack([t - base for t in tensors])
    w = torch.tensor(list(weights), dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    deltas.mul_(w)
    return deltas, w


def magnitude_magnitudes(delta: torch.Tensor) -> torch.Tensor:
    """|δ| flattened, in float32 (float64 stays float64) so selection is exact for half dtypes."""
    mag = delta.abs().reshape(-1)
    return mag if mag.dtype == torch.float64 else mag.float()


def topk_mask(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k entries of largest |δ|, found by selection (no full sort).

    Ties at the cut-off: every entry strictly above the k-th largest magnitude is kept, and of the
    entries equal to it, those with the lowest flat indices fill the remaining places.
    """
    n = delta.numel()
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    mag = magnitude_magnitudes(delta)
    threshold = torch.kthvalue(mag, n - k + 1).values
    mask = mag > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        equal = torch.nonzero(mag == threshold).flatten()[:missing]
        mask[equal] = True
    return mask.reshape(delta.shape)


def rescale_l1(masked: torch.Tensor, original: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale `masked` so its L1 norm matches `original`'s (mergekit's `rescale: true`)."""
    before, after = original.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def sign_consensus(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """TIES sign election over weighted task vectors stacked on dim 0.

    `sum`: the elected sign is that of Σ_i w_i δ̂_i (ties, = 0, elect +). `count`: the sign held by
    more models (ties elect +). Returns the mask of entries whose sign agrees; zeros never agree.
    """
    sign = deltas.sign()
    if method == "sum":
        elected = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    elif method == "count":
        elected = (sign.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    else:
        raise ValueError(f"consensus must be 'sum' or 'count', not {method!r}")
    return sign == elected
