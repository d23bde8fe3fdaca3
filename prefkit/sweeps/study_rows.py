"""The study's numbers, as plain rows the tables, the summary, the figures and `prefkit report`'s
JSON share: per method, per (method, preference), per point, and paired comparisons.

Intervals (prefkit.moo.stats): over seeds (Student's t) when a row has several, else a bootstrap
over the test examples when the points have per-example results and the score is accuracy, else
none (`None`).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np

from prefkit.sweeps.results import ScoredPoint
from prefkit.sweeps.study import Study

SIGNIFICANCE = 0.05


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _ci(low: Any, high: Any) -> list[float] | None:
    low, high = _finite(low), _finite(high)
    return None if low is None or high is None else [low, high]


def _nanmean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _mean_of(points: list[ScoredPoint], key: str) -> float | None:
    return _nanmean([p.cost.get(key) if isinstance(p.cost.get(key), (int, float)) else None
                     for p in points])


def interval_kind(study: Study, seeds: int, has_examples: bool) -> str | None:
    if seeds > 1:
        return "t over seeds"
    return "bootstrap over examples" if has_examples and study.by_examples else None


def method_stat(study: Study, method: str, stat) -> dict[str, Any]:
    """`stat` of the method's score matrix: per seed with a t interval, or one seed bootstrapped
    over its points' shared examples."""
    from prefkit.moo.stats import seeded_ci

    per_seed = study.results.by_seed(method)
    examples = study.aligned(study.points(method)) if len(per_seed) == 1 and study.by_examples else None
    value, low, high = seeded_ci(stat, per_seed, level=study.level, examples=examples,
                                 resamples=study.resamples)
    return {"value": value, "ci": _ci(low, high),
            "interval": interval_kind(study, len(per_seed), examples is not None)}


def method_row(study: Study, method: str) -> dict[str, Any]:
    from prefkit.moo import hypervolume, non_dominated

    points = study.points(method)
    means, _ = study.results.mean_matrix(method)
    hv = method_stat(study, method, lambda s: hypervolume(s, study.reference))
    mean = method_stat(study, method, lambda s: float(s.mean()))
    angles, nus = zip(*(study.following(p) for p in points))
    # alignment: the mean cosine of the ray angle, a point with no gain over chance counting 0
    # (it follows no preference); None without `majority`
    cosines = [None if study.gain(p) is None else 0.0 if a is None else math.cos(math.radians(a))
               for p, a in zip(points, angles)]
    cost = cost_row(points)
    return {"method": method, "family": points[0].family, "points": len(points),
            "seeds": len(study.results.seeds(method)), "front": int(non_dominated(means).sum()),
            "hypervolume": hv["value"], "hypervolume_ci": hv["ci"], "mean": mean["value"],
            "mean_ci": mean["ci"], "interval": hv["interval"],
            "best": {t: float(v) for t, v in zip(study.tasks, means.max(axis=0))},
            "alignment": _nanmean(cosines), "ray_angle": _nanmean(list(angles)),
            "non_uniformity": _nanmean(list(nus)), "cost": cost}


def cost_row(points: list[ScoredPoint]) -> dict[str, Any]:
    """Per point means and grid totals of the recorded cost (seconds)."""
    walls = [p.cost.get("wall_s") for p in points if isinstance(p.cost.get("wall_s"), (int, float))]
    cpus = [p.cost.get("cpu_s") for p in points if isinstance(p.cost.get("cpu_s"), (int, float))]
    # a tensor method records train_s 0: only points that trained (and did not reuse it) count
    trained = [p for p in points if isinstance(p.cost.get("train_s"), (int, float))
               and p.cost["train_s"] > 0 and not p.cost.get("train_cached")]
    return {"wall_s": _nanmean(walls), "cpu_s": _nanmean(cpus),
            "train_s": _mean_of(trained, "train_s"), "merge_s": _mean_of(points, "merge_s"),
            "eval_s": _mean_of(points, "eval_s"),
            "total_wall_s": float(sum(walls)) if walls else None,
            "total_cpu_s": float(sum(cpus)) if cpus else None,
            "trained": len(trained), "train_cached": sum(bool(p.cost.get("train_cached")) for p in points),
            "devices": sorted({str(p.cost["device"]) for p in points if p.cost.get("device")})}


def group_row(study: Study, method: str, preference: tuple[float, ...],
              points: list[ScoredPoint]) -> dict[str, Any]:
    """One method at one preference: per task the mean over seeds with its interval, the
    preference-weighted score, ray angle and non-uniformity."""
    from prefkit.moo.stats import bootstrap_ci, mean_ci

    p = np.asarray(preference)
    scores = np.array([pt.scores for pt in points], dtype=float)
    values = np.column_stack([scores, scores @ p])  # per task, then Σ p_i s_i
    examples = study.aligned(points[:1]) if len(points) == 1 and study.by_examples else None
    if len(points) > 1:
        cis = [mean_ci(values[:, j], study.level) for j in range(values.shape[1])]
        low, high = [c[1] for c in cis], [c[2] for c in cis]
    elif examples is not None:
        def stat(data):
            acc = np.array([np.mean(data[t]) for t in study.tasks])
            return np.append(acc, acc @ p)
        _, low, high = bootstrap_ci(stat, {t: v[0] for t, v in examples.items()}, study.level,
                                    study.resamples)
    else:
        low = high = [math.nan] * values.shape[1]
    mean = values.mean(axis=0)
    angles, nus = zip(*(study.following(pt) for pt in points))
    cells = {t: {"mean": float(mean[j]), "ci": _ci(low[j], high[j])} for j, t in enumerate(study.tasks)}
    return {"method": method, "preference": list(preference), "seeds": len(points), "tasks": cells,
            "weighted": {"mean": float(mean[-1]), "ci": _ci(low[-1], high[-1])},
            "ray_angle": _nanmean(list(angles)), "non_uniformity": _nanmean(list(nus)),
            "interval": interval_kind(study, len(points), examples is not None)}


def group_rows(study: Study) -> list[dict[str, Any]]:
    return [group_row(study, method, pref, points) for method in study.methods
            for pref, points in study.groups(method).items()]


def point_rows(study: Study) -> list[dict[str, Any]]:
    from prefkit.moo import non_dominated

    on_front: dict[int, bool] = {}
    for method in study.methods:
        for seed in study.results.seeds(method):
            chosen = [i for i, p in enumerate(study.results.points)
                      if p.method == method and p.seed == seed]
            scores = np.array([study.results.points[i].scores for i in chosen], dtype=float)
            on_front.update(zip(chosen, non_dominated(scores).tolist()))
    rows = []
    for i, p in enumerate(study.results.points):
        angle, nu = study.following(p)
        rows.append({"method": p.method, "preference": list(p.preference), "seed": p.seed,
                     "scores": dict(zip(study.tasks, p.scores)), "mean": float(np.mean(p.scores)),
                     "ray_angle": angle, "non_uniformity": nu, "front": on_front[i],
                     "wall_s": _finite(p.cost.get("wall_s")), "point": p.record.get("point")})
    return rows


def _accuracies(study: Study, point: ScoredPoint) -> dict[str, float] | None:
    acc = study.accuracy(point)
    return None if acc is None else dict(zip(study.tasks, acc.tolist()))


def paired(study: Study, a: str, b: str, preference: tuple[float, ...]) -> dict[str, Any] | None:
    """A vs B at one preference on the preference-weighted accuracy: paired t-test over their
    common seeds, or with one, a paired bootstrap over their common test examples."""
    from prefkit.moo.stats import paired_bootstrap

    ga, gb = study.groups(a).get(preference), study.groups(b).get(preference)
    if not ga or not gb:
        return None
    seeds = sorted({p.seed for p in ga} & {p.seed for p in gb}, key=lambda s: -1 if s is None else s)
    pa = [next(p for p in ga if p.seed == s) for s in seeds]
    pb = [next(p for p in gb if p.seed == s) for s in seeds]
    weights = study.weights(preference)
    if len(seeds) > 1:
        xa, xb = [_accuracies(study, p) for p in pa], [_accuracies(study, p) for p in pb]
        if None in xa or None in xb:
            return None
        test = paired_bootstrap(xa, xb, weights, level=study.level)
    elif len(seeds) == 1:
        both = study.aligned([pa[0], pb[0]])
        if both is None:
            return None
        test = paired_bootstrap({t: v[0] for t, v in both.items()}, {t: v[1] for t, v in both.items()},
                                weights, level=study.level, resamples=study.resamples)
    else:
        return None
    return {"a": a, "b": b, "preference": list(preference), "difference": test.difference,
            "ci": _ci(test.low, test.high), "p_value": _finite(test.p_value), "test": test.test,
            "n": test.n}


def comparisons(study: Study) -> list[dict[str, Any]]:
    """For each pair of methods: how many common preferences each wins at p < 0.05."""
    out = []
    for a, b in combinations(study.methods, 2):
        prefs = [k for k in study.groups(a) if k in study.groups(b)]
        tests = [t for t in (paired(study, a, b, k) for k in prefs) if t is not None]
        won = [t for t in tests if t["p_value"] is not None and t["p_value"] < SIGNIFICANCE]
        out.append({"a": a, "b": b, "preferences": len(prefs), "tested": len(tests),
                    "a_better": sum(t["difference"] > 0 for t in won),
                    "b_better": sum(t["difference"] < 0 for t in won),
                    "tests": sorted({t["test"] for t in tests}), "details": tests})
    return out
