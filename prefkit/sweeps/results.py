"""A sweep's scored points, read from `results.jsonl` records (the latest record of each point
counts; failed ones are kept apart): what the report, the plots and `prefkit.sweep`'s result use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.errors import DataError
from prefkit.sweeps.store import latest


@dataclass(frozen=True)
class ScoredPoint:
    method: str  # the row it belongs to
    preference: tuple[float, ...]  # normalised; uniform when the point had none
    scores: tuple[float, ...]  # one per task, in task order
    record: dict[str, Any]

    # what newer records add; absent (None, {} or the label) on older ones
    @property
    def seed(self) -> int | None:
        return self.record.get("seed")

    @property
    def family(self) -> str:
        return str(self.record.get("family") or self.record.get("label") or self.method)

    @property
    def grid(self) -> dict[str, Any]:
        return dict(self.record.get("grid") or {})

    @property
    def cost(self) -> dict[str, Any]:
        """The record's `cost`; an old record's `seconds` stands in for its wall time."""
        cost = dict(self.record.get("cost") or {})
        if cost.get("wall_s") is None and isinstance(self.record.get("seconds"), (int, float)):
            cost["wall_s"] = float(self.record["seconds"])
        return cost

    def task_value(self, task: str, key: str) -> float | None:
        """`results[task][key]` as a float (e.g. "majority", "loss"), or None."""
        value = (self.record.get("results") or {}).get(task, {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class SweepResults:
    tasks: list[str]
    metric: str
    points: list[ScoredPoint]
    failed: list[dict[str, Any]] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)  # distinct evaluate: settings

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(p.method for p in self.points))

    def matrix(self, method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        chosen = [p for p in self.points if method is None or p.method == method]
        m = len(self.tasks)
        scores = np.array([p.scores for p in chosen], dtype=float).reshape(-1, m)
        prefs = np.array([p.preference for p in chosen], dtype=float).reshape(-1, m)
        return scores, prefs

    def seeds(self, method: str) -> list[int | None]:
        return sorted({p.seed for p in self.points if p.method == method},
                      key=lambda s: -1 if s is None else s)

    def by_seed(self, method: str) -> list[np.ndarray]:
        """The method's score matrix per seed (rows: its points of that seed)."""
        m = len(self.tasks)
        return [np.array([p.scores for p in self.points if p.method == method and p.seed == s],
                         dtype=float).reshape(-1, m) for s in self.seeds(method)]

    def mean_matrix(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """Per preference of the method, the mean scores over its seeds (and the preferences)."""
        scores, prefs = self.matrix(method)
        keys = list(dict.fromkeys(tuple(np.round(p, 9)) for p in prefs))
        rows = np.round(prefs, 9)
        means = [scores[(rows == k).all(axis=1)].mean(axis=0) for k in keys]
        m = len(self.tasks)
        return np.array(means, dtype=float).reshape(-1, m), np.array(keys, dtype=float).reshape(-1, m)


_SEED_KEYS = ("seed", "random_seed")  # where a sweep's seeds: go: one method, several seeds


def _unseeded(settings: Any) -> Any:
    if not isinstance(settings, dict):
        return settings
    return {k: v for k, v in settings.items() if k not in _SEED_KEYS}


def _config(r: dict[str, Any]) -> str:
    return json.dumps([r.get("label"), r.get("merge_method"), _unseeded(r.get("parameters")),
                       _unseeded(r.get("train"))], sort_keys=True, default=str)


def _method_names(records: list[dict[str, Any]]) -> dict[str, str]:
    """Row name per (label, method, parameters, train): the label, made unique with parameters
    when a folder holds two configurations under one label (e.g. after editing the sweep)."""
    by_label: dict[str, set[str]] = {}
    for r in records:
        by_label.setdefault(str(r.get("label")), set()).add(_config(r))
    names = {}
    for r in records:
        label = str(r.get("label"))
        if len(by_label[label]) == 1:
            names[_config(r)] = label
        else:
            settings = {**(_unseeded(r.get("parameters")) or {}), **(_unseeded(r.get("train")) or {})}
            names[_config(r)] = f"{label} [{', '.join(f'{k}={v}' for k, v in settings.items())}]"
    return names


def collect(records: list[dict[str, Any]], metric: str = "accuracy") -> SweepResults:
    """Scored points from results.jsonl records (latest per point).

    Raises:
        DataError: no scored point, points over different tasks, or a missing metric.
    """
    current = list(latest(records).values())
    ok = [r for r in current if r.get("status") == "ok" and r.get("results")]
    failed = [r for r in current if r.get("status") != "ok"]
    if not ok:
        raise DataError("no scored points in the results", hint="run the sweep first (prefkit run)")
    tasks = list(ok[0].get("tasks") or ok[0]["results"])
    names = _method_names(ok)
    points, settings = [], []
    for r in ok:
        if list(r.get("tasks") or r["results"]) != tasks:
            raise DataError(f"point {r.get('point')} was scored on {r.get('tasks')}, others on {tasks}",
                            hint="keep one sweep per output folder")
        missing = [t for t in tasks if metric not in r["results"].get(t, {})]
        if missing:
            raise DataError(f"point {r.get('point')} has no {metric!r} for {', '.join(missing)}",
                            hint="pick a metric every task has, e.g. accuracy or macro_f1")
        pref = np.asarray(r.get("preference") or [1.0] * len(tasks), dtype=float)
        points.append(ScoredPoint(names[_config(r)], tuple((pref / pref.sum()).tolist()),
                                  tuple(float(r["results"][t][metric]) for t in tasks), r))
        if _unseeded(r.get("evaluate")) not in settings:  # seeds: changes only evaluate.seed
            settings.append(_unseeded(r.get("evaluate")))
    points.sort(key=lambda p: (p.method, tuple(-x for x in p.preference),
                               -1 if p.seed is None else p.seed))
    return SweepResults(tasks, metric, points, failed, settings)


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep (`prefkit.sweep`): every point's latest record, and the fronts."""

    output: Path
    points: list[dict[str, Any]]  # one record per point: method, parameters, preference, scores, cost
    report: Path | None
    line: dict[str, Any]  # the JSON line `prefkit run` prints for the sweep

    def results(self, metric: str = "accuracy") -> SweepResults:
        """The scored points as the report reads them (per method: scores and preferences)."""
        return collect(self.points, metric)

    def front(self, method: str, metric: str = "accuracy") -> np.ndarray:
        """The method's non-dominated score vectors (rows: its preferences' scores, the mean over
        seeds when the sweep has several; columns: tasks)."""
        from prefkit.moo import non_dominated

        scores, _ = self.results(metric).mean_matrix(method)
        return scores[non_dominated(scores)]

    def hypervolume(self, method: str, reference: list[float] | None = None,
                    metric: str = "accuracy") -> float:
        """Volume the method's points dominate above `reference` (default: 0 on every task), as
        the report's methods table gives it: per seed, then the mean over seeds."""
        from prefkit.moo import hypervolume

        per_seed = self.results(metric).by_seed(method)
        ref = [0.0] * per_seed[0].shape[1] if reference is None else list(reference)
        return float(np.mean([hypervolume(s, ref) for s in per_seed]))
