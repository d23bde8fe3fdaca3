"""The study's figures (listed in prefkit.sweeps.plots): pairwise fronts with intervals, the
ternary plot of gains over chance, cost against quality, AdaMerging's λ heatmaps, budget curves.
Colours: the Okabe–Ito palette (colour-blind safe), with a distinct marker per method."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
from matplotlib.figure import Figure

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def style(i: int) -> dict[str, Any]:
    """Colour and marker of the i-th method (markers change once colours repeat)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)],
            "marker": MARKERS[(i + i // len(OKABE_ITO)) % len(MARKERS)]}


def legend_below(fig: Figure, ax, count: int) -> None:
    """One legend for the figure, under its panels, in as many columns as fit."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fit = max(1, int(fig.get_figwidth() / 2.1))
        fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(count, fit)),
                   fontsize=8, frameon=False)


def _err(cells: list[dict[str, Any]]) -> np.ndarray | None:
    """Asymmetric error bars (2 x n) from mean/ci cells; None when no cell has an interval."""
    if all(c["ci"] is None for c in cells):
        return None
    return np.array([[c["mean"] - c["ci"][0], c["ci"][1] - c["mean"]] if c["ci"] else [0.0, 0.0]
                     for c in cells]).T


def fronts_figure(study, groups: list[dict[str, Any]]) -> Figure:
    """One panel per pair of tasks: per-preference means with 95% CI, and each method's front in
    that plane (its non-dominated means, joined)."""
    from prefkit.moo import non_dominated

    pairs = list(combinations(range(len(study.tasks)), 2))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(4.3 * cols, 3.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, (x, y) in zip(axes, pairs):
        tx, ty = study.tasks[x], study.tasks[y]
        for i, method in enumerate(study.methods):
            mine = [g for g in groups if g["method"] == method]
            xs = np.array([g["tasks"][tx]["mean"] for g in mine])
            ys = np.array([g["tasks"][ty]["mean"] for g in mine])
            look = style(i)
            ax.errorbar(xs, ys, xerr=_err([g["tasks"][tx] for g in mine]),
                        yerr=_err([g["tasks"][ty] for g in mine]), linestyle="none",
                        color=look["color"], marker=look["marker"], markersize=4.5, alpha=0.75,
                        elinewidth=0.8, capsize=2, label=method)
            front = np.column_stack([xs, ys])[non_dominated(np.column_stack([xs, ys]))]
            front = front[np.argsort(front[:, 0])]
            ax.plot(front[:, 0], front[:, 1], "-", color=look["color"], linewidth=1.2,
                    label=f"_front {method}")
        ax.set_xlabel(f"{tx} ({study.results.metric})")
        ax.set_ylabel(f"{ty} ({study.results.metric})")
        ax.set_title(f"{tx} vs {ty}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle("Per-preference means (95% CI) and each method's front, per pair of tasks",
                 fontsize=11)
    legend_below(fig, axes[0], len(study.methods))
    return fig


def _barycentric(weights: np.ndarray) -> np.ndarray:
    return (weights / weights.sum(axis=-1, keepdims=True)) @ _CORNERS


def _ternary_axes(ax, tasks: list[str]) -> None:
    ax.plot(*np.vstack([_CORNERS, _CORNERS[:1]]).T, color="0.3", linewidth=1)
    for t in (0.25, 0.5, 0.75):  # grid lines of each task's share
        for k in range(3):
            a, b, c = _CORNERS[k], _CORNERS[(k + 1) % 3], _CORNERS[(k + 2) % 3]
            ax.plot(*np.array([a + t * (b - a), a + t * (c - a)]).T, color="0.88", linewidth=0.6,
                    zorder=0)
    offsets = [(-0.04, -0.05, "right"), (1.04, -0.05, "left"), (0.5, math.sqrt(3) / 2 + 0.04, "center")]
    for (x, y, align), task in zip(offsets, tasks):
        ax.text(x, y, task, ha=align, va="center", fontsize=9)
    ax.set_xlim(-0.2, 1.2)
    ax.set_ylim(-0.1, 0.95)
    ax.set_aspect("equal")
    ax.axis("off")


def ternary_figure(study) -> Figure | None:
    """Each (method, preference) at the direction of its mean gains over chance g/Σg; × marks
    the preference asked for, joined to the point by a thin line. None without `majority`."""
    from prefkit.sweeps.study import pref_key

    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    ax = fig.add_subplot()
    _ternary_axes(ax, study.tasks)
    prefs = np.array(sorted({pref_key(p.preference) for p in study.points()}), dtype=float)
    ax.scatter(*_barycentric(prefs).T, marker="x", s=60, color="0.2", linewidths=1.2,
               label="preference asked for", zorder=4)
    drawn = 0
    for i, method in enumerate(study.methods):
        at, asked = [], []
        for pref, points in study.groups(method).items():
            gains = [g for g in (study.gain(p) for p in points) if g is not None]
            if gains and np.mean(gains, axis=0).sum() > 0:
                at.append(_barycentric(np.mean(gains, axis=0)))
                asked.append(_barycentric(np.array(pref)))
        if not at:
            continue
        drawn += 1
        look = style(i)
        for a, b in zip(at, asked):
            ax.plot([a[0], b[0]], [a[1], b[1]], color=look["color"], linewidth=0.7, alpha=0.45)
        ax.scatter(*np.array(at).T, s=34, label=method, zorder=3, alpha=0.9, edgecolors="white",
                   linewidths=0.5, **look)
    if not drawn:
        return None
    ax.set_title("Where each method puts its gains over chance\n(position: g/Σg per "
                 "(method, preference); ×: the preference; line: from one to the other)", fontsize=10)
    legend_below(fig, ax, len(study.methods) + 1)
    return fig


def cost_quality_figure(rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> Figure:
    """Mean wall seconds per point (log x) against hypervolume (95% CI) and against the mean
    preference-weighted score."""
    fig = Figure(figsize=(9.6, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, r in enumerate(rows):
        wall = r["cost"]["wall_s"]
        if not wall:
            continue
        look = style(i)
        ci = r["hypervolume_ci"]
        yerr = None if ci is None else [[r["hypervolume"] - ci[0]], [ci[1] - r["hypervolume"]]]
        left.errorbar([wall], [r["hypervolume"]], yerr=yerr, linestyle="none", markersize=7,
                      capsize=3, label=r["method"], **look)
        weighted = [g["weighted"]["mean"] for g in groups if g["method"] == r["method"]]
        right.plot([wall], [float(np.mean(weighted))], linestyle="none", markersize=7, **look)
    for ax, what in ((left, "hypervolume (95% CI)"), (right, "mean Σ p·score over preferences")):
        ax.set_xscale("log")
        ax.margins(0.12)
        ax.set_xlabel("mean wall seconds per point (log scale)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="both")
    left.set_title("Quality of the front against cost", fontsize=10)
    right.set_title("Preference-weighted score against cost", fontsize=10)
    legend_below(fig, left, len(rows))
    return fig


def lambda_figure(study, rows: list[dict[str, Any]]) -> Figure:
    """AdaMerging's λ as heatmaps: one panel per preference (tasks x layer groups, at most 9),
    or with per-task coefficients, one panel of tasks x preferences; cells show their value."""
    from prefkit.sweeps.study_tables import pref_text

    method = rows[0]["method"]
    if all(r["granularity"] == "task" for r in rows):
        matrix = np.array([[r["tasks"][t] for r in rows] for t in study.tasks])
        panels = [(matrix, [pref_text(r["preference"]) for r in rows], "")]
        xlabel = "preference"
    else:
        panels = [(np.array(r["matrix"]), r["groups"], f"preference {pref_text(r['preference'])}")
                  for r in rows[:9]]
        xlabel = "layer group"
    columns = max(len(p[1]) for p in panels)
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(min(18.0, cols * (1.2 + 0.42 * columns) + 1.2),
                          nrows * (0.9 + 0.34 * len(study.tasks)) + 1.6), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True).reshape(-1)
    finite = np.concatenate([p[0][np.isfinite(p[0])] for p in panels])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for k, (ax, (matrix, names, title)) in enumerate(zip(axes, panels)):
        image = ax.imshow(matrix, aspect="auto", cmap="cividis", vmin=lo, vmax=hi)
        if columns <= 16:
            _annotate(ax, matrix, (lo + hi) / 2)
        ax.set_yticks(range(len(study.tasks)), study.tasks, fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 4 else 0, fontsize=7)
        ax.set_title(title, fontsize=9)
        if k >= len(panels) - cols:
            ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[:len(panels)]), label="λ", shrink=0.9)
    fig.suptitle(f"{method}: learned λ per task" + ("" if xlabel == "preference" else
                                                    " and layer, per preference"), fontsize=11)
    return fig


def _annotate(ax, matrix: np.ndarray, middle: float) -> None:
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > middle else "white")


def budget_figure(curves: dict[str, list[dict[str, Any]]], metric: str) -> Figure:
    """Hypervolume (95% CI) and mean score against train.steps, one line per family."""
    fig = Figure(figsize=(9.6, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, (name, rows) in enumerate(curves.items()):
        steps = [float(r["value"]) for r in rows]
        for ax, key in ((left, "hypervolume"), (right, "mean")):
            cells = [{"mean": r[key], "ci": r[f"{key}_ci"]} for r in rows]
            ax.errorbar(steps, [c["mean"] for c in cells], yerr=_err(cells), capsize=3,
                        markersize=5, label=name, **style(i))
    for ax, what in ((left, "hypervolume (95% CI)"), (right, f"mean {metric} (95% CI)")):
        ax.set_xlabel("train.steps")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    left.set_title("Front quality against training budget", fontsize=10)
    right.set_title("Mean score against training budget", fontsize=10)
    legend_below(fig, left, len(curves))
    return fig
