"""A sweep read as a study: its scored points grouped by method, preference and seed, with what
the statistics need per point (accuracies, normalised gains over chance, per-example results from
`examples.npz`) and the zoo's one-off fine-tuning cost.

Newer records carry `seed`, `family`, `grid`, `cost`, `examples`, `learned` and per task
`majority` and `loss`; on older records each is treated as absent (no interval over examples, no
preference following without `majority`, wall time from `seconds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.sweeps.results import ScoredPoint, SweepResults
from prefkit.sweeps.store import POINTS

Examples = dict[str, tuple[np.ndarray, np.ndarray]]  # task -> (dataset indices, correct)


def pref_key(preference: Any) -> tuple[float, ...]:
    return tuple(round(float(x), 9) for x in preference)


@dataclass
class Study:
    folder: Path
    results: SweepResults
    reference: list[float]
    level: float = 0.95
    resamples: int = 2000
    _examples: dict[str, Examples | None] = field(default_factory=dict, repr=False)

    @property
    def tasks(self) -> list[str]:
        return self.results.tasks

    @property
    def methods(self) -> list[str]:
        return self.results.methods

    @property
    def by_examples(self) -> bool:
        """Per-example intervals are on accuracy, so only when the report's score is accuracy."""
        return self.results.metric == "accuracy"

    def points(self, method: str | None = None) -> list[ScoredPoint]:
        return [p for p in self.results.points if method is None or p.method == method]

    def groups(self, method: str) -> dict[tuple[float, ...], list[ScoredPoint]]:
        """The method's points per preference (in report order), one per seed."""
        out: dict[tuple[float, ...], list[ScoredPoint]] = {}
        for p in self.points(method):
            out.setdefault(pref_key(p.preference), []).append(p)
        return out

    def weights(self, preference: tuple[float, ...]) -> dict[str, float]:
        return dict(zip(self.tasks, preference))

    def accuracy(self, point: ScoredPoint) -> np.ndarray | None:
        values = [point.task_value(t, "accuracy") for t in self.tasks]
        return None if None in values else np.array(values, dtype=float)

    def gain(self, point: ScoredPoint) -> np.ndarray | None:
        """Normalised gain over the majority class per task; None without `majority`."""
        from prefkit.moo.stats import normalised_gain

        acc = self.accuracy(point)
        majority = [point.task_value(t, "majority") for t in self.tasks]
        if acc is None or None in majority:
            return None
        return normalised_gain(acc, majority)

    def following(self, point: ScoredPoint) -> tuple[float | None, float | None]:
        """(ray angle in degrees, non-uniformity) of the point; None where not defined."""
        from prefkit.moo.stats import gain_non_uniformity, ray_angle

        g = self.gain(point)
        if g is None:
            return None, None
        angle = ray_angle(g, point.preference)
        return (None if math.isnan(angle) else angle), gain_non_uniformity(g, point.preference)

    def examples(self, point: ScoredPoint) -> Examples | None:
        """The point's per-example results (`examples.npz`), or None when it has none."""
        name = str(point.record.get("point"))
        if name not in self._examples:
            self._examples[name] = _load_examples(self.folder, point.record, self.tasks)
        return self._examples[name]

    def aligned(self, points: list[ScoredPoint]) -> dict[str, np.ndarray] | None:
        """task -> ``k x n`` correct arrays of `points` on the examples they all have (matched by
        dataset index); None when one has no examples or a task has none in common."""
        loaded = [self.examples(p) for p in points]
        if not points or any(e is None for e in loaded):
            return None
        out = {}
        for t in self.tasks:
            common = loaded[0][t][0]
            for e in loaded[1:]:
                common = np.intersect1d(common, e[t][0])
            if common.size == 0:
                return None
            rows = []
            for index, correct in (e[t] for e in loaded):
                order = np.argsort(index, kind="stable")
                rows.append(correct[order[np.searchsorted(index[order], common)]])
            out[t] = np.stack(rows)
        return out


def _load_examples(folder: Path, record: dict[str, Any], tasks: list[str]) -> Examples | None:
    name, point = record.get("examples"), record.get("point")
    if not name or not point:
        return None
    path = folder / POINTS / str(point) / str(name)
    try:
        with np.load(path) as data:
            out = {t: (np.asarray(data[f"{t}.index"]), np.asarray(data[f"{t}.correct"], dtype=bool))
                   for t in tasks}
    except (OSError, KeyError, ValueError):
        return None
    if any(index.shape != correct.shape or index.size == 0 for index, correct in out.values()):
        return None
    return out


def zoo_cost(folder: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The input models' one-off fine-tuning seconds (`prefkit-demo.json`'s train_seconds), from
    the point recipes' absolute model paths or the sweep.yaml's (resolved where possible)."""
    models = _model_paths(folder, records)
    known = {}
    for path in models:
        seconds = _train_seconds(path / "prefkit-demo.json")
        if seconds is not None:
            known[str(path)] = seconds
    return {"models": len(models), "known": len(known), "per_model": known,
            "total_s": float(sum(known.values())) if known else None}


def _model_paths(folder: Path, records: list[dict[str, Any]]) -> list[Path]:
    refs: list[Path] = []
    for r in records:  # a point recipe holds its models' absolute paths
        recipe = _read_yaml(folder / POINTS / str(r.get("point")) / "recipe.yaml")
        if recipe:
            refs += [Path(str(m.get("model") or m.get("path"))) for m in recipe.get("models") or []
                     if isinstance(m, dict)]
            break
    if not refs:
        recipe = _read_yaml(folder / "sweep.yaml") or {}
        for m in recipe.get("models") or []:
            ref = m.get("model") or m.get("path") if isinstance(m, dict) else None
            for base in (Path.cwd(), folder, folder.parent):
                if ref and (base / str(ref)).is_dir():
                    refs.append((base / str(ref)).resolve())
                    break
    return [p for p in dict.fromkeys(refs) if p.is_dir()]


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _train_seconds(path: Path) -> float | None:
    from prefkit.sweeps.store import read_json

    info = read_json(path)
    if info is None:
        return None
    for holder in (info, info.get("results") if isinstance(info.get("results"), dict) else {}):
        if isinstance(holder.get("train_seconds"), (int, float)):
            return float(holder["train_seconds"])
    return None
