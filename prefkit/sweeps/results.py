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


def _config(r: dict[str, Any]) -> str:
    return json.dumps([r.get("label"), r.get("merge_method"), r.get("parameters"), r.get("train")],
                      sort_keys=True, default=str)


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
            settings = {**(r.get("parameters") or {}), **(r.get("train") or {})}
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
        if r.get("evaluate") not in settings:
            settings.append(r.get("evaluate"))
    points.sort(key=lambda p: (p.method, tuple(-x for x in p.preference)))
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
        """The method's non-dominated score vectors (rows: points, columns: tasks)."""
        from prefkit.moo import non_dominated

        scores, _ = self.results(metric).matrix(method)
        return scores[non_dominated(scores)]

    def hypervolume(self, method: str, reference: list[float] | None = None,
                    metric: str = "accuracy") -> float:
        """Volume the method's points dominate above `reference` (default: 0 on every task), as
        the report's methods table gives it."""
        from prefkit.moo import hypervolume

        scores, _ = self.results(metric).matrix(method)
        return hypervolume(scores, [0.0] * scores.shape[1] if reference is None else list(reference))
