"""Scalarizations of a vector of task losses under a preference, and EPO's non-uniformity.

All functions take 1-D torch tensors of length m (one entry per task) and return 0-d tensors that
are differentiable with respect to ``losses`` (autograd flows through them). The preference is
validated and normalised to sum to 1 by :func:`normalize_preference`; higher ``p_i`` means task
``i`` matters more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "chebyshev_scalarization",
    "linear_scalarization",
    "non_uniformity",
    "normalize_preference",
]

TensorLike = torch.Tensor | Sequence[float]


def _as_losses(losses: TensorLike) -> torch.Tensor:
    t = losses if isinstance(losses, torch.Tensor) else torch.as_tensor(losses, dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(
            f"losses must be a non-empty 1-D tensor (one loss per task), got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _as_vector(x: TensorLike) -> torch.Tensor:
    """A detached tensor; plain Python numbers become float64 (no float32 rounding on the way)."""
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def normalize_preference(
    preference: TensorLike, m: int | None = None, *, like: torch.Tensor | None = None
) -> torch.Tensor:
    """Validate a preference over tasks and return it normalised to sum to 1.

    ``preference`` must be 1-D, of length ``m`` when ``m`` is given, finite, non-negative and not all
    zero; otherwise a :class:`ValueError` says which rule was broken. With ``like``, the result has
    that tensor's dtype and device. The preference is treated as a constant (detached).
    """
    p = _as_vector(preference)
    if p.ndim != 1 or p.numel() == 0:
        raise ValueError(f"preference must be a non-empty 1-D vector, got shape {tuple(p.shape)}")
    if m is not None and p.numel() != m:
        raise ValueError(f"preference has {p.numel()} entries but there are {m} tasks (losses)")
    p = p.to(dtype=like.dtype if like is not None else torch.float64)
    if like is not None:
        p = p.to(device=like.device)
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"preference must be finite, got {p.tolist()}")
    if bool((p < 0).any()):
        raise ValueError(f"preference must be non-negative, got {p.tolist()}")
    total = p.sum()
    if not bool(total > 0):
        raise ValueError("preference must not be all zero (it is normalised to sum to 1)")
    return p / total


def linear_scalarization(losses: TensorLike, preference: TensorLike) -> torch.Tensor:
    """``sum_i p_i * L_i`` with ``p`` the preference normalised to sum to 1."""
    L = _as_losses(losses)
    p = normalize_preference(preference, L.numel(), like=L)
    return (p * L).sum()


def chebyshev_scalarization(
    losses: TensorLike,
    preference: TensorLike,
    ideal: TensorLike | None = None,
    mu: float | None = None,
) -> torch.Tensor:
    """Weighted Chebyshev scalarization ``max_i p_i * (L_i - z_i)``.

    ``ideal`` is the ideal (utopia) point ``z`` (default 0, one entry per task). With ``mu`` given
    (``mu > 0``) the smooth form ``mu * logsumexp(p * (L - z) / mu)`` is returned instead; it is an
    upper bound of the max, within ``mu * log(m)`` of it, and tends to it as ``mu -> 0``.

    Minimising the (hard) form over a convex problem reaches the Pareto point where the weighted
    gaps ``p_i (L_i - z_i)`` are equal whenever that point exists, i.e. the losses sit on the ray
    ``L_i - z_i ∝ 1/p_i``. Differentiable with respect to ``losses`` (the hard max gives a
    subgradient: the gradient of an active term).
    """
    L = _as_losses(losses)
    p = normalize_preference(preference, L.numel(), like=L)
    if ideal is None:
        gaps = L
    else:
        z = _as_vector(ideal)
        if z.ndim != 1 or z.numel() != L.numel():
            raise ValueError(f"ideal must be a 1-D vector of length {L.numel()}, got shape {tuple(z.shape)}")
        gaps = L - z.to(dtype=L.dtype, device=L.device)
    weighted = p * gaps
    if mu is None:
        return weighted.max()
    if not (mu > 0):
        raise ValueError(f"mu must be > 0 for the smooth Chebyshev form, got {mu}")
    return mu * torch.logsumexp(weighted / mu, dim=0)


def non_uniformity(losses: TensorLike, preference: TensorLike) -> torch.Tensor:
    """EPO's non-uniformity of the losses with respect to the preference (Mahapatra & Rajan, 2020).

    With ``l_hat = (p * L) / sum(p * L)``, returns ``KL(l_hat || 1/m) = sum_i l_hat_i log(m l_hat_i)``
    (terms with ``l_hat_i = 0`` contribute 0). It is ``>= 0``, and zero exactly when all ``p_i L_i``
    are equal: the losses lie on the preference ray ``L_i ∝ 1/p_i``. Losses must be non-negative;
    if every ``p_i L_i`` is zero the losses are taken as uniform and 0 is returned.
    """
    L = _as_losses(losses)
    p = normalize_preference(preference, L.numel(), like=L)
    if bool((L.detach() < 0).any()):
        raise ValueError(f"non_uniformity needs non-negative losses, got {L.detach().tolist()}")
    m = L.numel()
    weighted = p * L
    total = weighted.sum()
    if not bool(total.detach() > 0):
        return total * 0.0
    l_hat = weighted / total
    safe = torch.where(l_hat > 0, l_hat, torch.ones_like(l_hat))
    return torch.where(l_hat > 0, l_hat * torch.log(m * safe), torch.zeros_like(l_hat)).sum()
