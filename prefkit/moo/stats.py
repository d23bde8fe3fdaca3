"""A study's statistics (numpy and SciPy only): confidence intervals over seeds or over test
examples, paired comparisons of two methods, hypervolume with its interval, and how well a point
follows its preference.

Intervals. With several seeds a value is a mean over seeds with Student's t interval
``mean ± t_{(1+level)/2, n-1} · s / √n`` (:func:`mean_ci`). With one seed the only source of
sampling noise left is the finite test set, so the interval is a percentile bootstrap over the test
examples (:func:`bootstrap_ci`): each replicate draws, *per task* (stratified), as many example
indices with replacement as the task has, and recomputes the statistic; the interval is the
``(1-level)/2`` and ``(1+level)/2`` quantiles of the replicates. A statistic over several points
(a method's hypervolume) uses the same resampled indices for all of them in one replicate.

Paired comparison (:func:`paired_bootstrap`) of methods A and B at one preference ``p`` on the same
test examples, statistic ``d = Σ_i p_i (acc_i(A) - acc_i(B))`` (the difference of
preference-weighted accuracies):

* one seed: paired bootstrap over examples (the same indices for A and B); two-sided
  ``p = min(1, 2 · min((1 + #{d* ≤ 0}) / (R + 1), (1 + #{d* ≥ 0}) / (R + 1)))`` over R replicates;
* several seeds: paired t-test over the seeds' paired differences (``scipy.stats.ttest_rel``),
  interval by :func:`mean_ci` of the differences.

Preference following, per point with accuracies ``acc`` and majority-class rates ``maj`` (the
accuracy of always answering the most frequent class of the evaluated examples):

* normalised gain over chance ``g_i = clip((acc_i - maj_i) / (1 - maj_i), 0, 1)`` (0 when
  ``maj_i = 1``): 0 = no better than the majority class, 1 = perfect;
* ``ray_angle = degrees(arccos(g·p / (|g| |p|)))``: 0 when the gains are in the proportions the
  preference asks for, 90 when all the gain is on tasks the preference gives no weight; NaN when
  ``g = 0``. At a vertex preference ``e_k`` it is ``arccos(g_k / |g|)``, so two points at
  ``[1, 0, 0]`` with different gains get different angles;
* ``non_uniformity`` = EPO's KL measure (:func:`prefkit.moo.non_uniformity`) on the normalised
  errors ``e_i = 1 - g_i`` over the preference's support ``S = {i: p_i > 0}``:
  ``l_i = p_i e_i / Σ_{j∈S} p_j e_j``, ``KL = Σ_{i∈S} l_i ln(|S| l_i)``; 0 when ``p_i e_i`` are equal
  on S (on the preference ray), and 0 when every ``e_i`` on S is 0. On a vertex preference
  ``|S| = 1`` and it is 0 whatever the scores: the measure says nothing there, the angle does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PairedTest", "bootstrap_ci", "gain_non_uniformity", "hypervolume_ci", "mean_ci",
    "normalised_gain", "paired_bootstrap", "ray_angle", "seeded_ci", "weighted_accuracy",
]

Samples = Mapping[str, Any]  # task -> per-example values, examples on the last axis


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean with Student's t interval: ``(mean, low, high)``; one value gives ``(value, nan, nan)``.

    Example:
        >>> mean_ci([1.0, 2.0, 3.0])[0]
        2.0
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def _as_samples(samples: Samples | np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
    if isinstance(samples, Mapping):
        return {k: np.asarray(v) for k, v in samples.items()}, True
    return {"": np.asarray(samples)}, False


def _indices(sizes: Mapping[str, int], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Per task (stratum), ``resamples x n`` example indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, n, size=(resamples, n)) for k, n in sizes.items()}


def bootstrap_ci(stat_fn: Callable[[Any], Any], samples: Samples | np.ndarray, level: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> tuple[Any, Any, Any]:
    """Percentile bootstrap over examples, stratified per task.

    Args:
        stat_fn: the statistic of (resampled) samples, in the same structure as ``samples``; it
            may return a float or an array (intervals are then element-wise).
        samples: task -> array with the examples on the last axis (``(n,)`` for one point, ``(k, n)``
            for k points sharing examples: one replicate uses the same indices for all k rows), or a
            single array (one stratum).
        level: the interval's coverage. resamples: replicates. seed: the draws' seed (reproducible).

    Returns:
        ``(stat_fn(samples), low, high)``.
    """
    data, mapped = _as_samples(samples)
    if any(v.shape[-1] == 0 for v in data.values()):
        raise ValueError("bootstrap_ci needs at least one example per task")
    estimate = stat_fn(samples)
    draws = _indices({k: v.shape[-1] for k, v in data.items()}, resamples, seed)
    replicates = []
    for r in range(resamples):
        resampled = {k: v[..., draws[k][r]] for k, v in data.items()}
        replicates.append(np.asarray(stat_fn(resampled if mapped else resampled[""]), dtype=float))
    stacked = np.stack(replicates)
    tail = (1 - level) / 2
    low, high = np.quantile(stacked, [tail, 1 - tail], axis=0)
    if np.ndim(estimate) == 0:
        return float(estimate), float(low), float(high)
    return np.asarray(estimate, dtype=float), low, high


def weighted_accuracy(correct: Samples, preference: Mapping[str, float]) -> float:
    """``Σ_i p_i acc_i`` with ``acc_i`` the mean of task i's correct array (or a given accuracy)."""
    total = sum(float(w) for w in preference.values())
    return sum(float(w) / total * float(np.mean(correct[t])) for t, w in preference.items() if w > 0)


class PairedTest(NamedTuple):
    """The result of :func:`paired_bootstrap`: A − B in preference-weighted accuracy."""

    difference: float  # mean difference A - B
    low: float
    high: float
    p_value: float  # two-sided; NaN when there is nothing to test
    test: str  # "paired bootstrap" (one seed, over examples) or "paired t-test" (over seeds)
    n: int  # examples (bootstrap, summed over tasks) or seeds (t-test)


def paired_bootstrap(a: Samples | Sequence[Samples], b: Samples | Sequence[Samples],
                     preference: Mapping[str, float], *, level: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> PairedTest:
    """Is A better than B at this preference, on the same test examples?

    Args:
        a, b: task -> correct array, aligned (entry j of A and of B is the same test example); or a
            list of such mappings, one per seed, paired seed by seed (entries may then be the
            accuracies themselves). One mapping: paired bootstrap over examples; several: paired
            t-test over the seeds (see the module docstring).
        preference: task -> weight (normalised here; tasks of weight 0 do not count).

    Returns:
        A :class:`PairedTest` naming the test used.
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise ValueError("give both methods as one mapping (one seed) or both as lists")
        return _paired_examples(a, b, preference, level, resamples, seed)
    if len(a) != len(b):
        raise ValueError(f"paired seeds: {len(a)} for A, {len(b)} for B")
    if len(a) == 1:
        return _paired_examples(a[0], b[0], preference, level, resamples, seed)
    return _paired_seeds(a, b, preference, level)


def _paired_examples(a: Samples, b: Samples, preference: Mapping[str, float], level: float,
                     resamples: int, seed: int) -> PairedTest:
    total = sum(float(w) for w in preference.values())
    weights = {t: float(w) / total for t, w in preference.items() if w > 0}
    diffs = {}
    for t in weights:
        x, y = np.asarray(a[t], dtype=float), np.asarray(b[t], dtype=float)
        if x.shape != y.shape or x.ndim != 1 or x.size == 0:
            raise ValueError(f"task {t}: paired arrays need one equal, non-zero length "
                             f"(got {x.shape} and {y.shape})")
        diffs[t] = x - y
    estimate = sum(w * float(diffs[t].mean()) for t, w in weights.items())
    draws = _indices({t: d.size for t, d in diffs.items()}, resamples, seed)
    replicates = sum(w * diffs[t][draws[t]].mean(axis=1) for t, w in weights.items())
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    below = (1 + int((replicates <= 0).sum())) / (resamples + 1)
    above = (1 + int((replicates >= 0).sum())) / (resamples + 1)
    p = min(1.0, 2 * min(below, above))
    return PairedTest(estimate, float(low), float(high), p, "paired bootstrap",
                      sum(d.size for d in diffs.values()))


def _paired_seeds(a: Sequence[Samples], b: Sequence[Samples], preference: Mapping[str, float],
                  level: float) -> PairedTest:
    from scipy import stats

    wa = np.array([weighted_accuracy(x, preference) for x in a])
    wb = np.array([weighted_accuracy(y, preference) for y in b])
    d = wa - wb
    mean, low, high = mean_ci(d, level)
    if np.allclose(d, d[0]):  # no spread: the t statistic is undefined
        p = 1.0 if abs(d[0]) < 1e-12 else math.nan
    else:
        p = float(stats.ttest_rel(wa, wb).pvalue)
    return PairedTest(mean, low, high, p, "paired t-test", int(d.size))


def seeded_ci(stat: Callable[[np.ndarray], float], scores_by_seed: Sequence[np.ndarray], *,
              level: float = 0.95, examples: Samples | None = None, resamples: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """A statistic of a method's ``k x m`` score matrix with its interval.

    Several seeds: ``stat`` per seed, then :func:`mean_ci`. One seed with ``examples`` (task ->
    ``k x n`` correct arrays, rows in the order of the score matrix, tasks in column order):
    bootstrap over examples, the statistic of the resampled accuracy matrix. Otherwise no interval.
    """
    values = [stat(np.asarray(s, dtype=float)) for s in scores_by_seed]
    if len(values) != 1:
        return mean_ci(values, level)
    if not examples:
        return values[0], math.nan, math.nan
    tasks = list(examples)

    def resampled(data: Samples) -> float:
        return stat(np.stack([np.asarray(data[t], dtype=float).mean(axis=-1) for t in tasks], axis=1))

    _, low, high = bootstrap_ci(resampled, examples, level, resamples, seed)
    return values[0], low, high


def hypervolume_ci(scores_by_seed: Sequence[np.ndarray], *, reference: Sequence[float] | None = None,
                   level: float = 0.95, examples: Samples | None = None, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """A method's hypervolume (reference 0 by default) with its interval: per seed, then
    :func:`mean_ci`; one seed: bootstrap over examples (see :func:`seeded_ci`).

    Example:
        >>> hypervolume_ci([np.array([[1.0, 2.0], [2.0, 1.0]])])[0]
        3.0
    """
    from prefkit.moo.front import hypervolume

    def stat(scores: np.ndarray) -> float:
        ref = [0.0] * scores.shape[1] if reference is None else list(reference)
        return hypervolume(scores, ref)

    return seeded_ci(stat, scores_by_seed, level=level, examples=examples, resamples=resamples,
                     seed=seed)


def normalised_gain(accuracy: Any, majority: Any) -> np.ndarray:
    """``clip((acc - maj) / (1 - maj), 0, 1)``, element-wise; 0 where ``maj >= 1``."""
    acc = np.asarray(accuracy, dtype=np.float64)
    maj = np.asarray(majority, dtype=np.float64)
    room = 1.0 - maj
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(room > 0, (acc - maj) / np.where(room > 0, room, 1.0), 0.0)
    return np.clip(gain, 0.0, 1.0)


def _preference(preference: Any, m: int) -> np.ndarray:
    p = np.asarray(preference, dtype=np.float64).reshape(-1)
    if p.size != m or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"preference must hold {m} non-negative finite weights, not all 0, "
                         f"got {p.tolist()}")
    return p / p.sum()


def ray_angle(gain: Any, preference: Any) -> float:
    """Angle in degrees between the normalised gains and the preference; NaN when ``g = 0``."""
    g = np.asarray(gain, dtype=np.float64).reshape(-1)
    p = _preference(preference, g.size)
    norm = float(np.linalg.norm(g)) * float(np.linalg.norm(p))
    if norm <= 0:
        return math.nan
    return math.degrees(math.acos(min(1.0, max(-1.0, float(g @ p) / norm))))


def gain_non_uniformity(gain: Any, preference: Any) -> float:
    """EPO's KL non-uniformity of the errors ``1 - g`` over the preference's support."""
    g = np.asarray(gain, dtype=np.float64).reshape(-1)
    p = _preference(preference, g.size)
    support = p > 0
    weighted = p[support] * (1.0 - g[support])
    total = float(weighted.sum())
    if total <= 0:
        return 0.0
    share = weighted / total
    positive = share > 0
    return float((share[positive] * np.log(support.sum() * share[positive])).sum())
