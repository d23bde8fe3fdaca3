"""The sweep report, rebuilt from `results.jsonl` alone: one row per method (hypervolume, mean
score, best score per task, preference alignment), one row per point, plots, `report.md`.

Like FusionBench's reports, scores are per task with their mean; a method is a row whatever its
kind (merge or trainer). The latest record of each point counts (a re-run or `--evaluate-only`
supersedes earlier lines); failed points are listed apart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.errors import DataError
from prefkit.sweeps.results import SweepResults, collect
from prefkit.sweeps.store import RESULTS, read_results, write_atomic


def alignment(results: SweepResults) -> dict[str, np.ndarray]:
    """Per point (in `results.points` order), on the scale of all points of the sweep."""
    from prefkit.moo import preference_alignment

    scores, prefs = results.matrix()
    return preference_alignment(scores, prefs)


def method_rows(results: SweepResults, reference: list[float] | None = None) -> list[dict[str, Any]]:
    """One row per method: points, front size, hypervolume, mean score, best per task, mean
    cosine alignment and non-uniformity."""
    from prefkit.moo import hypervolume, non_dominated

    m = len(results.tasks)
    ref = [0.0] * m if reference is None else list(reference)
    aligned = alignment(results)
    rows = []
    for method in results.methods:
        scores, _ = results.matrix(method)
        mask = np.array([p.method == method for p in results.points])
        cosine = aligned["cosine"][mask]
        nu = aligned["non_uniformity"][mask]
        rows.append({
            "method": method, "points": int(len(scores)),
            "front": int(non_dominated(scores).sum()),
            "hypervolume": hypervolume(scores, ref),
            "mean": float(scores.mean()),
            "best": {t: float(v) for t, v in zip(results.tasks, scores.max(axis=0))},
            "alignment": _nanmean(cosine), "non_uniformity": _nanmean(nu),
        })
    return rows


def point_rows(results: SweepResults) -> list[dict[str, Any]]:
    from prefkit.moo import non_dominated

    aligned = alignment(results)
    on_front = {}
    for method in results.methods:
        chosen = [i for i, p in enumerate(results.points) if p.method == method]
        scores, _ = results.matrix(method)
        on_front.update(zip(chosen, non_dominated(scores).tolist()))
    return [{"method": p.method, "preference": list(p.preference),
             "scores": dict(zip(results.tasks, p.scores)), "mean": float(np.mean(p.scores)),
             "alignment": _finite(aligned["cosine"][i]),
             "non_uniformity": _finite(aligned["non_uniformity"][i]), "front": on_front[i],
             "point": p.record.get("point")} for i, p in enumerate(results.points)]


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def methods_table(results: SweepResults, rows: list[dict[str, Any]]) -> str:
    header = ["method", "points", "front", "hypervolume", "mean",
              *[f"best {t}" for t in results.tasks], "alignment (cos)", "non-uniformity"]
    body = [[r["method"], str(r["points"]), str(r["front"]), _fmt(r["hypervolume"]), _fmt(r["mean"]),
             *[_fmt(r["best"][t]) for t in results.tasks], _fmt(r["alignment"]),
             _fmt(r["non_uniformity"])] for r in rows]
    return _table(header, body)


def points_table(results: SweepResults, rows: list[dict[str, Any]]) -> str:
    header = ["method", "preference", *results.tasks, "mean", "cos", "non-unif.", "front"]
    body = [[r["method"], "[" + ", ".join(f"{x:.2f}" for x in r["preference"]) + "]",
             *[_fmt(r["scores"][t]) for t in results.tasks], _fmt(r["mean"]),
             _fmt(r["alignment"], 3), _fmt(r["non_uniformity"], 3), "●" if r["front"] else ""]
            for r in rows]
    return _table(header, body)


def write_report(folder: Path, *, metric: str = "accuracy", reference: list[float] | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Rebuild `report.md` (and the plots) in `folder` from its results.jsonl.

    Returns:
        {"rows": method rows, "points": point rows, "report": path, "plots": [paths], "note": str}
    """
    path = folder / RESULTS
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="give the output folder of a sweep")
    results = collect(read_results(path), metric)
    if reference is not None and len(reference) not in (1, len(results.tasks)):
        raise DataError(f"--reference has {len(reference)} values for {len(results.tasks)} tasks")
    if reference is not None and len(reference) == 1:
        reference = reference * len(results.tasks)
    rows = method_rows(results, reference)
    points = point_rows(results)
    images, note = [], ""
    if plots:
        try:
            from prefkit.sweeps.plots import write_plots
        except ImportError:
            note = "plots skipped: matplotlib is not installed (pip install 'prefkit[plots]')"
        else:
            images = write_plots(folder, results, rows)
    text = _markdown(folder, results, rows, points, images, reference, note)
    write_atomic(folder / "report.md", text)
    return {"rows": rows, "points": points, "report": str(folder / "report.md"),
            "plots": [str(p) for p in images], "note": note}


def _markdown(folder, results, rows, points, images, reference, note) -> str:
    ref = reference or [0.0] * len(results.tasks)
    settings = ", ".join(json.dumps(s, sort_keys=True) for s in results.settings)
    lines = [
        f"# Sweep report: {folder.name}", "",
        f"{len(results.points)} scored points, {len(results.methods)} methods, tasks "
        f"{', '.join(results.tasks)}; score: {results.metric} (evaluate: {settings}).",
    ]
    if len(results.settings) > 1:
        lines.append("**Warning:** the points were scored with different evaluate: settings.")
    lines += [
        "", "## Methods", "",
        methods_table(results, rows), "",
        f"- *hypervolume*: volume dominated by the method's points above the reference "
        f"({', '.join(f'{x:g}' for x in ref)}), higher is better; *front*: its non-dominated points.",
        "- *mean*: mean over its points of the mean score over tasks; *best*: best score per task.",
        "- *alignment (cos)*: mean cosine between a point's normalised score gain "
        "(score − min) / (max − min), per task over all points, and its preference; 1 = the "
        "trade-off asked for. *non-uniformity*: EPO's KL measure on the normalised losses "
        "1 − gain (0 = on the preference ray).", "",
        "## Points", "", points_table(results, points), "",
    ]
    if results.failed:
        lines += ["## Failed points", ""]
        lines += [f"- {r.get('label')} {r.get('preference')}: {r.get('error')}" for r in results.failed]
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    if note:
        lines += [note, ""]
    return "\n".join(lines)
