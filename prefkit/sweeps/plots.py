"""PNG figures of a study (matplotlib, extra `prefkit[plots]`), drawn on Figure objects so that no
global pyplot state or display is involved, saved without a version stamp (same numbers, same bytes):

* `fronts.png`: per pair of tasks, each method's per-preference means with 95% CI error bars and
  its front line (prefkit.sweeps.figures);
* `ternary.png` (exactly 3 tasks): each (method, preference) placed by the direction of its gains
  over chance, the preference grid marked;
* `score_vs_preference.png`: each task's score against the weight the preference gives it;
* `cost_quality.png`: mean wall seconds per point (log) against hypervolume and against the mean
  preference-weighted score, one marker per method;
* `lambda_<method>.png`: AdaMerging's learned λ (tasks x layers) per preference;
* `budget.png`: hypervolume and mean score against train.steps, one line per family.

Colours: the Okabe–Ito palette (colour-blind safe), with a distinct marker per method.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from prefkit.sweeps.figures import legend_below, style

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_METADATA = {"Software": None}  # no version stamp: the same results give the same bytes
DPI = 110


def write_plots(folder: Path, found: dict[str, Any]) -> list[Path]:
    """Write the figures of an analysed study (prefkit.sweeps.report.analyse) into `folder`."""
    from prefkit.sweeps import figures

    study = found["study"]
    drawn: list[tuple[str, Figure]] = []
    if len(study.tasks) >= 2:
        drawn.append(("fronts.png", figures.fronts_figure(study, found["groups"])))
    if len(study.tasks) == 3 and (fig := figures.ternary_figure(study)) is not None:
        drawn.append(("ternary.png", fig))
    drawn.append(("score_vs_preference.png", score_vs_preference_figure(study)))
    if any(r["cost"]["wall_s"] for r in found["rows"]):
        drawn.append(("cost_quality.png", figures.cost_quality_figure(found["rows"], found["groups"])))
    for method in dict.fromkeys(r["method"] for r in found["lambdas"]):
        mine = [r for r in found["lambdas"] if r["method"] == method]
        drawn.append((f"lambda_{_SAFE.sub('_', method)}.png", figures.lambda_figure(study, mine)))
    if found["curves"]:
        drawn.append(("budget.png", figures.budget_figure(found["curves"], study.results.metric)))
    return [save(fig, folder / name) for name, fig in drawn]


def save(fig: Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata=_METADATA)
    tmp.replace(path)
    return path


def score_vs_preference_figure(study) -> Figure:
    """Per task: the mean score (over the points with that weight) against the task's weight."""
    m = len(study.tasks)
    fig = Figure(figsize=(3.4 * m + 0.4, 3.6), layout="constrained")
    axes = fig.subplots(1, m, squeeze=False)[0]
    for i, method in enumerate(study.methods):
        scores, prefs = study.results.matrix(method)
        for t, ax in enumerate(axes):
            weights = np.unique(prefs[:, t].round(6))
            means = [scores[np.isclose(prefs[:, t], w), t].mean() for w in weights]
            ax.plot(weights, means, "-", markersize=5, label=method, **style(i))
    for t, ax in enumerate(axes):
        ax.set_xlabel(f"preference weight of {study.tasks[t]}")
        ax.set_title(study.tasks[t], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{study.results.metric} (mean over points)")
    fig.suptitle("Score of each task against the weight the preference gives it", fontsize=11)
    legend_below(fig, axes[0], len(study.methods))
    return fig
