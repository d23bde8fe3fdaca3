"""Front metrics on per-task scores (maximisation): hypervolume, non-dominated set, and how well
each point follows the preference it was made for.

Scores are an ``n x m`` array (or tensor): row ``k`` holds the ``m`` task scores of point ``k``,
higher is better. Hypervolume and dominance come from moocore (exact algorithms: O(n log n) in 2
and 3 dimensions, HV4D+ in 4, inclusion-exclusion or recursion above).

Alignment puts every task on one scale first: with a nadir ``lo`` and an ideal ``hi`` (by default
the per-task minimum and maximum over the points given), a point's *score-improvement vector* is
``u = (s - lo) / (hi - lo)``, its gain over the nadir in units of each task's range. A point follows
its preference ``p`` when its gains are proportional to ``p`` (the preference ray for gains; the
more a task matters, the more it gained), so:

* ``cosine`` = cos(u, p), 1 on the ray, NaN when ``u`` is zero (the point gained nothing);
* ``non_uniformity`` = EPO's KL measure (:func:`prefkit.moo.non_uniformity`) applied to the
  normalised losses ``1 - u`` (the shortfall from the ideal): 0 when ``p_i (1 - u_i)`` are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["hypervolume", "non_dominated", "preference_alignment"]


def _as_matrix(points: Any, name: str = "points") -> np.ndarray:
    if hasattr(points, "detach"):  # a torch tensor
        points = points.detach().cpu().double().numpy()
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, 0)
    if array.ndim != 2:
        raise ValueError(f"{name} must be an n x m array (one row per point), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def hypervolume(points: Any, reference: Sequence[float] | Any, maximize: bool = True) -> float:
    """The volume dominated by ``points`` and bounded by ``reference``.

    Args:
        points: ``n x m`` scores (array, nested lists or tensor); ``n`` may be 0.
        reference: ``m`` values (or one value for every task). With ``maximize`` only the part of
            each point's box above the reference counts; points not better than the reference in
            every task add nothing.
        maximize: higher is better (scores); ``False`` for losses.

    Returns:
        The hypervolume, 0.0 for no points.

    Raises:
        ValueError: points not ``n x m`` or not finite, or a reference of the wrong length.

    Example:
        >>> hypervolume([[1, 2], [2, 1]], [0, 0])
        3.0
    """
    import moocore

    array = _as_matrix(points)
    ref = np.asarray(reference.detach().cpu() if hasattr(reference, "detach") else reference,
                     dtype=np.float64).reshape(-1)
    if array.shape[0] == 0:
        return 0.0
    m = array.shape[1]
    if ref.size == 1:
        ref = np.full(m, float(ref[0]))
    if ref.size != m or not np.isfinite(ref).all():
        raise ValueError(f"reference must hold {m} finite values (one per task), got {ref.tolist()}")
    return float(moocore.hypervolume(array, ref=ref, maximise=maximize))


def non_dominated(points: Any, maximize: bool = True) -> np.ndarray:
    """Boolean mask of the points no other point dominates (Pareto front).

    A point dominates another when it is at least as good in every task and better in one. Of
    several identical points only the first is kept.
    """
    import moocore

    array = _as_matrix(points)
    if array.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(array, maximise=maximize), dtype=bool)


def preference_alignment(scores: Any, preferences: Any, *, nadir: Sequence[float] | None = None,
                         ideal: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Per point: cosine between its normalised score gain and its preference, and EPO's
    non-uniformity of its normalised losses (see the module docstring).

    Args:
        scores: ``n x m`` task scores (higher is better).
        preferences: ``n x m`` preferences, one row per point (normalised here).
        nadir / ideal: per-task lower / upper ends of the scale; default: the column minimum /
            maximum of ``scores``. A task whose range is zero counts as no gain.

    Returns:
        ``{"cosine": (n,), "non_uniformity": (n,)}``; the cosine is NaN for a point that gained
        nothing on any task.
    """
    import torch

    from prefkit.moo.scalarization import non_uniformity

    s = _as_matrix(scores, "scores")
    p = _as_matrix(preferences, "preferences")
    if s.shape != p.shape:
        raise ValueError(f"scores {s.shape} and preferences {p.shape} must have the same shape")
    if (p < 0).any() or (p.sum(axis=1) <= 0).any():
        raise ValueError("preferences must be non-negative with a positive sum in every row")
    p = p / p.sum(axis=1, keepdims=True)
    lo = s.min(axis=0) if nadir is None else np.asarray(nadir, dtype=np.float64)
    hi = s.max(axis=0) if ideal is None else np.asarray(ideal, dtype=np.float64)
    span = hi - lo
    flat = span <= 0
    gain = np.where(flat, 0.0, (s - lo) / np.where(flat, 1.0, span))
    gain = np.clip(gain, 0.0, 1.0)
    norms = np.linalg.norm(gain, axis=1) * np.linalg.norm(p, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (gain * p).sum(axis=1) / np.where(norms > 0, norms, 1.0), np.nan)
    losses = 1.0 - gain
    nu = np.array([float(non_uniformity(torch.as_tensor(loss), torch.as_tensor(pref)))
                   for loss, pref in zip(losses, p)])
    return {"cosine": cosine, "non_uniformity": nu}
