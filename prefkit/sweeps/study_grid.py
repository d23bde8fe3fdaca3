"""The study's swept settings and learned coefficients: budget rows (a family's quality against a
grid setting such as train.steps or train.mu) and AdaMerging's learned λ per task and layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from prefkit.sweeps.study import Study, pref_key

BUDGET_KEY = "train.steps"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def grid_rows(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (family, grid setting, value) where a family has several values of it; the
    quality and cost are the method row's (`rows`)."""
    by_method = {r["method"]: r for r in rows}
    grids = {m: study.points(m)[0].grid for m in study.methods}
    families: dict[str, list[str]] = {}
    for m in study.methods:
        if grids[m]:
            families.setdefault(study.points(m)[0].family, []).append(m)
    out = []
    for family, methods in families.items():
        keys = list(dict.fromkeys(k for m in methods for k in grids[m]))
        for key in keys:
            values = {m: grids[m].get(key) for m in methods if key in grids[m]}
            if len({repr(v) for v in values.values()}) < 2:
                continue
            ordered = sorted(values, key=lambda m: (_number(values[m]) is None,
                                                   _number(values[m]) or 0.0, str(values[m])))
            for m in ordered:
                r = by_method[m]
                out.append({"family": family, "setting": key, "value": values[m], "method": m,
                            "others": {k: v for k, v in grids[m].items() if k != key},
                            "hypervolume": r["hypervolume"], "hypervolume_ci": r["hypervolume_ci"],
                            "mean": r["mean"], "mean_ci": r["mean_ci"],
                            "wall_s": r["cost"]["wall_s"], "seeds": r["seeds"]})
    return out


def budget_curves(grid: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The train.steps rows per curve (family, with any other grid values in its name)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in grid:
        if r["setting"] == BUDGET_KEY and _number(r["value"]) is not None:
            others = " ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(r["others"].items()))
            curves.setdefault(f"{r['family']} {others}".strip(), []).append(r)
    return {k: v for k, v in curves.items() if len(v) >= 2}


def _lambda_matrix(learned: Any, tasks: list[str]) -> tuple[list[str], np.ndarray] | None:
    """(group names, tasks x groups λ) from a record's learned["lambda"]; one group "task" for
    per-task coefficients. None when it is not of either form."""
    lam = learned.get("lambda") if isinstance(learned, dict) else None
    if not isinstance(lam, dict) or any(t not in lam for t in tasks):
        return None
    if all(_number(lam[t]) is not None for t in tasks):
        return ["task"], np.array([[float(lam[t])] for t in tasks])
    if not all(isinstance(lam[t], dict) for t in tasks):
        return None
    groups = list(dict.fromkeys(g for t in tasks for g in lam[t]))
    matrix = np.array([[_number(lam[t].get(g)) if _number(lam[t].get(g)) is not None else np.nan
                        for g in groups] for t in tasks], dtype=float)
    return groups, matrix


def lambda_rows(study: Study) -> list[dict[str, Any]]:
    """Per (method, preference) with learned λ: the tasks x groups matrix (mean over seeds), and
    per task its mean over groups and range."""
    out = []
    for method in study.methods:
        for pref, points in study.groups(method).items():
            found = [_lambda_matrix(p.record.get("learned"), study.tasks) for p in points]
            found = [f for f in found if f is not None]
            if not found or any(f[0] != found[0][0] for f in found):
                continue
            groups = found[0][0]
            matrix = np.nanmean(np.stack([f[1] for f in found]), axis=0)
            out.append({
                "method": method, "preference": list(pref_key(pref)), "seeds": len(found),
                "granularity": "task" if groups == ["task"] else "layer", "groups": groups,
                "matrix": matrix.tolist(),
                "tasks": {t: float(np.nanmean(matrix[i])) for i, t in enumerate(study.tasks)},
                "range": {t: [float(np.nanmin(matrix[i])), float(np.nanmax(matrix[i]))]
                          for i, t in enumerate(study.tasks)}})
    return out
