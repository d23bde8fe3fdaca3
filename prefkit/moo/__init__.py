"""Preference maths for multi-objective (multi-task) optimisation: tensors in, tensors out.

Conventions used throughout ``prefkit.moo``:

* There are ``m`` tasks with losses ``L = (L_1, ..., L_m)`` (a 1-D torch tensor, non-negative where
  a function says so).
* A *preference* ``p`` is a vector of ``m`` non-negative weights, not all zero; every function
  normalises it to sum to 1 (:func:`normalize_preference`). Higher ``p_i`` means task ``i`` matters
  more. Wrong length, negative, non-finite or all-zero preferences raise :class:`ValueError`.
* The *preference ray* is the set of loss vectors with ``p_1 L_1 = ... = p_m L_m`` (``L_i ∝ 1/p_i``):
  the more a task matters, the smaller its loss there. EPO search converges to the Pareto optimal
  point on this ray; the Chebyshev scalarization (ideal point 0) targets the same point on convex
  problems, and :func:`non_uniformity` measures the distance from the ray (0 on it).
* EPO (Mahapatra & Rajan, ICML 2020) states its preference ``r`` so that ``r_i L_i`` are equal on the
  ray: ``p`` here plays exactly the role of the paper's ``r``.
* A Jacobian is ``m x n``: row ``i`` is the gradient of ``L_i`` with respect to the ``n`` parameters;
  a step is ``theta <- theta - lr * alpha @ jacobian``.

SciPy is needed only by :func:`epo_search_direction` (imported lazily). Front metrics on task
scores (:func:`hypervolume`, :func:`non_dominated`, :func:`preference_alignment`) use moocore.
A study's statistics (``prefkit.moo.stats``: intervals over seeds or examples, paired tests,
hypervolume intervals, ray angle) need only numpy and SciPy.
"""

from .epo import EPODirection, epo_adjustments, epo_search_direction
from .front import hypervolume, non_dominated, preference_alignment
from .scalarization import (
    chebyshev_scalarization,
    linear_scalarization,
    non_uniformity,
    normalize_preference,
)
from .stats import (
    PairedTest,
    bootstrap_ci,
    gain_non_uniformity,
    hypervolume_ci,
    mean_ci,
    normalised_gain,
    paired_bootstrap,
    ray_angle,
)

__all__ = [
    "EPODirection",
    "PairedTest",
    "bootstrap_ci",
    "chebyshev_scalarization",
    "epo_adjustments",
    "epo_search_direction",
    "gain_non_uniformity",
    "hypervolume",
    "hypervolume_ci",
    "linear_scalarization",
    "mean_ci",
    "non_dominated",
    "non_uniformity",
    "normalised_gain",
    "normalize_preference",
    "paired_bootstrap",
    "preference_alignment",
    "ray_angle",
]
