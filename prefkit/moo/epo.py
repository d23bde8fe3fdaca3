"""Exact Pareto Optimal (EPO) search: the descent direction of Mahapatra & Rajan (ICML 2020).

"Multi-Task Learning with User Preferences: Gradient Descent with Controlled Ascent in Pareto
Optimization". Written from the paper and the authors' reference (dbmptr/EPOSearch, ``epo_lp.py``),
with the two linear programs solved by SciPy's HiGHS (``scipy.optimize.linprog(method="highs")``).

Convention. The paper's preference vector ``r`` is the one whose *exact Pareto optimal* solution
has ``r_i L_i`` equal for all tasks. Here the preference ``p`` (normalised to sum to 1, higher
``p_i`` = task ``i`` matters more) plays the role of ``r`` directly: the EPO solution is the Pareto
optimal point with ``p_1 L_1 = p_2 L_2 = ... = p_m L_m``, i.e. ``L_i ∝ 1/p_i`` -- a task that
matters more ends with a smaller loss. This is the same point the Chebyshev scalarization with
ideal point 0 targets on convex problems.

One step. Given the losses ``L`` (length m, non-negative) and the Jacobian ``J`` (m x n, row ``i``
is the gradient of ``L_i``), :func:`epo_search_direction` returns weights ``alpha`` on the simplex;
the update is ``theta <- theta - lr * alpha @ J``. To first order that changes the losses by
``-lr * G @ alpha`` with ``G = J J^T``.

* ``mode == "balance"`` when the non-uniformity ``mu = KL(l_hat || 1/m)`` exceeds ``eps``
  (``l_hat = p*L / sum(p*L)``): with the adjustments ``a_i = p_i (log(m l_hat_i) - mu)`` (positive
  for tasks whose weighted loss is above the uniform share), maximise ``alpha^T G a`` (the rate at
  which the losses move towards the preference ray) subject to ``alpha`` on the simplex and, when
  some ``(G a)_j > 0``, ``(G alpha)_j >= (G a)_j`` for the other tasks and ``(G alpha)_j >= 0``
  (no increase) for the task(s) with the largest ``p_j L_j``; when no ``(G a)_j`` is positive,
  ``G alpha >= 0`` (no loss increases).
* ``mode == "descent"`` otherwise (already on the ray within ``eps``): maximise ``1^T G alpha``
  (total first-order decrease) subject to the simplex, ``G alpha >= 0`` (no loss increases) and,
  unless ``relax=True``, ``alpha^T G a >= min(max_j (G a)_j, 0)`` (do not drift away from the ray).

Fallback. In exact arithmetic both programs are feasible (the min-norm point of the convex hull of
the gradients satisfies every constraint). If HiGHS nevertheless reports failure, the restricted
descent program is retried relaxed; if that (or the balance program) still fails, ``fallback`` is
returned when given (e.g. the previous step's ``alpha``), else the uniform ``alpha = 1/m``, and
``lp_success`` is ``False``. If every gradient is zero (``G == 0``) the uniform ``alpha`` is returned
with ``lp_success=True`` (the step is zero anyway).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .scalarization import TensorLike, _as_losses, _as_vector, normalize_preference

__all__ = ["EPODirection", "epo_adjustments", "epo_search_direction"]


class EPODirection(NamedTuple):
    """Result of :func:`epo_search_direction`. Unpacks as ``alpha, mode, mu, lp_success``."""

    alpha: torch.Tensor
    """Weights on the task gradients (length m, non-negative, sum 1); step is ``-lr * alpha @ J``."""
    mode: str
    """``"balance"`` (moving towards the preference ray) or ``"descent"`` (on the ray, descending)."""
    non_uniformity: float
    """The non-uniformity ``mu`` of the losses at this step (0 on the preference ray)."""
    lp_success: bool
    """``False`` when the linear program failed and the documented fallback ``alpha`` was used."""


def epo_adjustments(losses: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Return ``(p*L, mu, a)``: weighted losses, non-uniformity, and EPO's adjustment vector.

    ``a_i = p_i (log(m l_hat_i) - mu)``. Entries with ``l_hat_i = 0`` are clamped to the smallest
    positive float before the log, so ``a`` stays finite.
    """
    m = losses.shape[0]
    pl = p * losses
    total = pl.sum()
    if total <= 0:
        return pl, 0.0, np.zeros(m)
    l_hat = pl / total
    tiny = np.finfo(l_hat.dtype).tiny
    pos = l_hat > 0
    mu = float(np.sum(l_hat[pos] * np.log(m * l_hat[pos])))
    a = p * (np.log(m * np.maximum(l_hat, tiny)) - mu)
    return pl, mu, a


def _linprog(c, A_ub, b_ub, m):
    from scipy.optimize import linprog

    res = linprog(
        c,
        A_ub=A_ub if A_ub is not None and len(A_ub) else None,
        b_ub=b_ub if b_ub is not None and len(b_ub) else None,
        A_eq=np.ones((1, m)),
        b_eq=np.ones(1),
        bounds=[(0.0, None)] * m,
        method="highs",
    )
    if res.status != 0 or res.x is None:
        return None
    alpha = np.clip(res.x, 0.0, None)
    s = alpha.sum()
    return alpha / s if s > 0 else None


def _check_shapes(jacobian, gram, m: int) -> torch.Tensor:
    """The Jacobian (m x n) or Gram matrix (m x m), exactly one of them given, as a tensor."""
    if (jacobian is None) == (gram is None):
        raise ValueError("give exactly one of jacobian and gram")
    J_t = torch.as_tensor(jacobian if jacobian is not None else gram)
    if jacobian is None and tuple(J_t.shape) != (m, m):
        raise ValueError(f"gram must be m x m with m={m}, got {tuple(J_t.shape)}")
    if J_t.ndim != 2 or J_t.shape[0] != m:
        raise ValueError(f"jacobian must be m x n with m={m} rows (one per loss), got {tuple(J_t.shape)}")
    return J_t


def _loss_array(L_t: torch.Tensor) -> np.ndarray:
    L = L_t.detach().to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(L)) or np.any(L < 0):
        raise ValueError(f"EPO needs finite non-negative losses, got {L.tolist()}")
    return L


def _fallback_alpha(fallback: TensorLike | None, m: int) -> np.ndarray:
    """The ``alpha`` returned when a linear program fails: ``fallback``, else uniform."""
    if fallback is None:
        return np.full(m, 1.0 / m)
    fb = _as_vector(fallback)
    if fb.ndim != 1 or fb.numel() != m:
        raise ValueError(f"fallback alpha must have {m} entries, got shape {tuple(fb.shape)}")
    return fb.to("cpu", torch.float64).numpy()


def _gram_matrix(J_t: torch.Tensor, is_jacobian: bool) -> np.ndarray:
    """``G = J J^T`` in float64 on the CPU (a copy of ``J_t`` when it is already the Gram matrix)."""
    Jd = J_t.detach().to("cpu", torch.float64)
    return (Jd @ Jd.T).numpy() if is_jacobian else Jd.numpy().copy()


def _balance_alpha(G: np.ndarray, Ga: np.ndarray, pl: np.ndarray, m: int) -> np.ndarray | None:
    """The balance program: maximise ``alpha^T G a`` (see the module docstring); None on failure."""
    positive = Ga > 0
    if positive.any():
        top = np.flatnonzero(pl == pl.max())
        rows = [j for j in range(m) if not positive[j] and j not in top]
        A = [-G[j] for j in rows] + [-G[j] for j in top]
        b = [-Ga[j] for j in rows] + [0.0 for _ in top]
    else:
        A, b = list(-G), [0.0] * m
    return _linprog(-Ga, np.array(A), np.array(b), m)


def _descent_alpha(G: np.ndarray, Ga: np.ndarray, m: int, relax: bool) -> np.ndarray | None:
    """The descent program: maximise ``1^T G alpha`` with ``G alpha >= 0`` and, unless ``relax``
    (or that program fails), the restriction towards the ray; None when both fail."""
    c = -G.sum(axis=0)  # maximise 1^T G alpha
    A_rel, b_rel = -G, np.zeros(m)
    alpha = None
    if not relax:
        bound = min(float(Ga.max()), 0.0)
        alpha = _linprog(c, np.vstack([A_rel, -Ga[None, :]]), np.append(b_rel, -bound), m)
    if alpha is None:
        alpha = _linprog(c, A_rel, b_rel, m)
    return alpha


def epo_search_direction(
    losses: TensorLike,
    jacobian: torch.Tensor | None,
    preference: TensorLike,
    *,
    eps: float = 1e-4,
    relax: bool = False,
    fallback: TensorLike | None = None,
    gram: TensorLike | None = None,
) -> EPODirection:
    """One EPO search direction: weights ``alpha`` for ``theta <- theta - lr * alpha @ jacobian``.

    ``losses`` (length m, non-negative) are the task losses at ``theta``; ``jacobian`` is m x n with
    row ``i`` the gradient of ``L_i``; ``preference`` is normalised to sum 1 and the target is the
    Pareto optimal point with all ``p_i L_i`` equal (see the module docstring for the convention,
    the two modes and the fallback). ``eps`` is the non-uniformity threshold above which the step
    balances rather than descends. Returns an :class:`EPODirection` (``alpha`` in the dtype and on
    the device of ``jacobian``). Requires SciPy (``pip install scipy``); inputs are detached.

    Instead of the Jacobian, its Gram matrix ``gram = J J^T`` (m x m) may be given (with
    ``jacobian=None``): the direction depends on J only through G, and a training loop can
    accumulate G tensor by tensor without ever concatenating J.
    """
    L_t = _as_losses(losses)
    m = L_t.numel()
    J_t = _check_shapes(jacobian, gram, m)
    if not (eps >= 0):
        raise ValueError(f"eps must be >= 0, got {eps}")
    p = normalize_preference(preference, m).numpy()
    L = _loss_array(L_t)
    out_dtype = J_t.dtype if J_t.is_floating_point() else torch.get_default_dtype()

    def result(alpha: np.ndarray, mode: str, mu: float, ok: bool) -> EPODirection:
        return EPODirection(torch.as_tensor(alpha, dtype=out_dtype, device=J_t.device), mode, mu, ok)

    fb_np = _fallback_alpha(fallback, m)
    G = _gram_matrix(J_t, jacobian is not None)
    pl, mu, a = epo_adjustments(L, p)
    scale = np.abs(G).max()
    mode = "balance" if mu > eps else "descent"
    if not np.isfinite(scale):
        raise ValueError("jacobian contains non-finite values")
    if scale == 0:
        return result(np.full(m, 1.0 / m), mode, mu, True)
    G = G / scale  # the feasible sets and the optimisers are invariant to this scaling
    Ga = G @ a
    alpha = _balance_alpha(G, Ga, pl, m) if mode == "balance" else _descent_alpha(G, Ga, m, relax)
    if alpha is None:
        return result(fb_np, mode, mu, False)
    return result(alpha, mode, mu, True)
