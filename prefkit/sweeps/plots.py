"""PNG plots of a sweep (matplotlib, extra `prefkit[plots]`), drawn on Figure objects so that no
global pyplot state or display is involved:

* 2 tasks: `front.png`, the score plane with every method's points and front, and the
  preference rays (from the worst to the best scores, in the direction of each preference);
* 3+ tasks: `parallel_<method>.png`, parallel coordinates per method, one line per point
  coloured by its preference (for 3 tasks the colour's RGB are the three weights);
* always: `score_vs_preference.png`, each task's score against the weight the preference gives
  that task, one curve per method.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from prefkit.sweeps.results import SweepResults

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_METADATA = {"Software": None}  # no version stamp: the same results give the same bytes


def write_plots(folder: Path, results: SweepResults, rows: list[dict[str, Any]]) -> list[Path]:
    """Write the plots for `results` into `folder`; returns their paths."""
    written = []
    if len(results.tasks) == 2:
        written.append(_save(front_figure(results), folder / "front.png"))
    elif len(results.tasks) >= 3:
        for method in results.methods:
            name = f"parallel_{_SAFE.sub('_', method)}.png"
            written.append(_save(parallel_figure(results, method), folder / name))
    written.append(_save(score_vs_preference_figure(results), folder / "score_vs_preference.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata=_METADATA)
    tmp.replace(path)
    return path


def front_figure(results: SweepResults) -> Figure:
    from prefkit.moo import non_dominated

    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    scores, prefs = results.matrix()
    lo, hi = scores.min(axis=0), scores.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    for p in np.unique(prefs.round(6), axis=0):  # the preference rays, on the normalised scale
        direction = p * span / max(float(np.max(p)), 1e-12)
        ax.plot([lo[0], lo[0] + direction[0]], [lo[1], lo[1] + direction[1]], color="0.8",
                linestyle="--", linewidth=0.8, zorder=0)
    for i, method in enumerate(results.methods):
        s, _ = results.matrix(method)
        color = f"C{i}"
        ax.scatter(s[:, 0], s[:, 1], color=color, alpha=0.45, s=22, label=None)
        front = s[non_dominated(s)]
        front = front[np.argsort(front[:, 0])]
        ax.plot(front[:, 0], front[:, 1], "-o", color=color, markersize=5, label=method)
    ax.set_xlabel(f"{results.tasks[0]} ({results.metric})")
    ax.set_ylabel(f"{results.tasks[1]} ({results.metric})")
    ax.set_title("Score plane: fronts and preference rays")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _colour(p: np.ndarray):
    if len(p) == 3:
        return tuple(float(x) for x in p / max(float(p.max()), 1e-12) * 0.85)
    from matplotlib import colormaps

    return colormaps["viridis"](float(p[0]))


def parallel_figure(results: SweepResults, method: str) -> Figure:
    fig = Figure(figsize=(1.6 * len(results.tasks) + 2.5, 4.4))
    ax = fig.add_subplot()
    scores, prefs = results.matrix(method)
    x = np.arange(len(results.tasks))
    for s, p in zip(scores, prefs):
        label = "[" + ", ".join(f"{v:.2f}" for v in p) + "]"
        ax.plot(x, s, "-o", color=_colour(p), alpha=0.8, markersize=3, linewidth=1.2, label=label)
    ax.set_xticks(x, results.tasks)
    ax.set_ylabel(results.metric)
    colours = "RGB = task weights" if len(results.tasks) == 3 else f"colour = weight of {results.tasks[0]}"
    ax.set_title(f"{method}: one line per preference ({colours})")
    ax.grid(alpha=0.3)
    if len(scores) <= 21:
        ax.legend(fontsize=6, ncol=1 + len(scores) // 11, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def score_vs_preference_figure(results: SweepResults) -> Figure:
    m = len(results.tasks)
    fig = Figure(figsize=(3.6 * m, 3.4))
    axes = fig.subplots(1, m, squeeze=False)[0]
    for i, method in enumerate(results.methods):
        scores, prefs = results.matrix(method)
        for t, ax in enumerate(axes):
            weights = np.unique(prefs[:, t].round(6))
            means = [scores[np.isclose(prefs[:, t], w), t].mean() for w in weights]
            ax.plot(weights, means, "-o", color=f"C{i}", markersize=4, label=method)
    for t, ax in enumerate(axes):
        ax.set_xlabel(f"preference weight of {results.tasks[t]}")
        ax.set_title(results.tasks[t], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{results.metric} (mean over points)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig
