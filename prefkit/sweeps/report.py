"""The sweep's study report, rebuilt from `results.jsonl` alone (and, where present, each point's
`examples.npz`, the point recipes and the zoo's `prefkit-demo.json`): `report.md` and its figures.

Sections: what the numbers show, a row per method (hypervolume and mean score with 95% intervals,
preference following, cost), per-task scores per (method, preference), paired comparisons, cost
with the zoo's one-off fine-tuning apart, budget and other swept settings, AdaMerging's learned λ,
figures, one row per point, failures, definitions. Intervals and tests: prefkit.moo.stats. The
latest record of each point counts (a re-run or `--evaluate-only` supersedes earlier lines).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefkit.errors import DataError
from prefkit.sweeps import study_tables as tables
from prefkit.sweeps.results import collect
from prefkit.sweeps.store import RESULTS, read_results, write_atomic
from prefkit.sweeps.study import Study, zoo_cost

DEFINITIONS = [
    "- *hypervolume*: volume the method's points dominate above the reference {ref} (higher is "
    "better), per seed, then the mean over seeds; *front*: the method's non-dominated "
    "preferences (mean scores over seeds). *mean*: the mean score over its points and tasks.",
    "- *95% CI*: Student's t interval over seeds when a row has several (mean ± t·s/√n); with one "
    "seed, a percentile bootstrap over the test examples (2000 replicates, resampled per task; one "
    "replicate uses the same examples for all points of a method); none without per-example "
    "results or when the score is not accuracy. *interval* names which.",
    "- *gain over chance* per task: g = clip((accuracy − majority) / (1 − majority), 0, 1), "
    "majority = the majority-class rate of the evaluated examples. *ray angle* = the angle in "
    "degrees between g and the preference p (0: gains in the proportions asked for; 90: all the "
    "gain on tasks p gives no weight). *non-unif.*: EPO's KL measure on the errors e = 1 − g over "
    "the preference's support S: l_i = p_i e_i / Σ_S p_j e_j, Σ_S l_i ln(|S| l_i) (0 on the "
    "preference ray; always 0 at a vertex preference such as [1, 0, 0], where only the angle "
    "tells points apart). Both need `majority` in the records and use accuracy. The JSON's "
    "*alignment* is the mean cosine of the ray angle, a point with no gain over chance counting 0.",
    "- *paired comparisons*: the preference-weighted accuracy Σ p_i acc_i of A minus B at the same "
    "preference; a paired t-test over common seeds when there are several, else a paired bootstrap "
    "over the common test examples (two-sided p = 2·min(P(d*≤0), P(d*≥0)) with the +1 correction).",
    "- *cost*: wall and CPU seconds per point as recorded (merge, evaluation and training; a "
    "cached training counts as cached, not in train s); the zoo's fine-tuning is one-off.",
]


def _reference(reference: list[float] | None, m: int) -> list[float]:
    if reference is None:
        return [0.0] * m
    if len(reference) not in (1, m):
        raise DataError(f"--reference has {len(reference)} values for {m} tasks")
    return list(reference) * m if len(reference) == 1 else list(reference)


def analyse(folder: Path, *, metric: str = "accuracy", reference: list[float] | None = None,
            resamples: int = 2000) -> dict[str, Any]:
    """Everything the report shows, as rows (see prefkit.sweeps.study_rows)."""
    from prefkit.sweeps.study_grid import budget_curves, grid_rows, lambda_rows
    from prefkit.sweeps.study_rows import comparisons, group_rows, method_row, point_rows

    path = folder / RESULTS
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="give the output folder of a sweep")
    results = collect(read_results(path), metric)
    study = Study(folder, results, _reference(reference, len(results.tasks)), resamples=resamples)
    rows = [method_row(study, m) for m in study.methods]
    grid = grid_rows(study, rows)
    return {"study": study, "rows": rows, "groups": group_rows(study), "points": point_rows(study),
            "comparisons": comparisons(study), "grid": grid, "curves": budget_curves(grid),
            "lambdas": lambda_rows(study), "zoo": zoo_cost(folder, [p.record for p in results.points])}


def write_report(folder: Path, *, metric: str = "accuracy", reference: list[float] | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Rebuild `report.md` (and the figures) in `folder` from its results.jsonl.

    Returns:
        {"rows": method rows, "points": point rows, "report": path, "plots": [paths], "note": str,
        "groups": per (method, preference) rows, "comparisons": paired tests, "grid": swept
        settings, "lambdas": learned λ, "zoo": the zoo's fine-tuning cost}
    """
    folder = Path(folder)
    found = analyse(folder, metric=metric, reference=reference)
    images, note = [], ""
    if plots:
        try:
            from prefkit.sweeps.plots import write_plots
        except ImportError:
            note = "plots skipped: matplotlib is not installed (pip install 'prefkit[plots]')"
        else:
            images = write_plots(folder, found)
    write_atomic(folder / "report.md", markdown(folder, found, images, note))
    extra = {k: found[k] for k in ("groups", "comparisons", "grid", "lambdas", "zoo")}
    return {"rows": found["rows"], "points": found["points"], "report": str(folder / "report.md"),
            "plots": [str(p) for p in images], "note": note, **extra}


def _intro(folder: Path, study: Study) -> list[str]:
    results = study.results
    settings = ", ".join(json.dumps(s, sort_keys=True) for s in results.settings)
    seeds = sorted({p.seed for p in results.points if p.seed is not None})
    lines = [f"# Study report: {folder.name}", "",
             f"{len(results.points)} scored points, {len(results.methods)} methods, tasks "
             f"{', '.join(results.tasks)}" + (f", seeds {', '.join(map(str, seeds))}" if seeds else "")
             + f"; score: {results.metric} (evaluate: {settings})."]
    if len(results.settings) > 1:
        lines.append("**Warning:** the points were scored with different evaluate: settings.")
    return lines


def _sections(found: dict[str, Any]) -> list[str]:
    from prefkit.sweeps.summary import summary_lines

    study, rows = found["study"], found["rows"]
    ref = ", ".join(f"{x:g}" for x in study.reference)
    lines = ["", "## What this shows", "",
             *summary_lines(rows, found["comparisons"], found["zoo"], found["curves"]), "",
             "## Methods", "", tables.methods_table(rows), "",
             *[d.format(ref=f"({ref})") for d in DEFINITIONS], "",
             "## Per-task scores", "", "Mean over seeds per (method, preference), 95% CI as in the "
             "methods table.", "", tables.tasks_table(study, found["groups"]), "",
             "## Paired comparisons", "", *tables.comparison_lines(found["comparisons"]), ""]
    if any(c["details"] for c in found["comparisons"]):
        lines += [tables.comparisons_table(found["comparisons"]), ""]
    lines += ["## Cost", "", tables.cost_table(rows), "", tables.zoo_line(found["zoo"], rows), ""]
    if found["grid"]:
        lines += ["## Budget and swept settings", "", "Quality against each setting a family "
                  "sweeps (grid:), one row per value.", "", tables.grid_table(found["grid"]), ""]
    if found["lambdas"]:
        lines += ["## Learned coefficients (AdaMerging λ)", "",
                  tables.lambda_table(study, found["lambdas"]), ""]
    return lines


def markdown(folder: Path, found: dict[str, Any], images: list[Path], note: str) -> str:
    study = found["study"]
    lines = _intro(folder, study) + _sections(found)
    if images:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    if note:
        lines += [note, ""]
    lines += ["## Points", "", tables.points_table(study, found["points"]), ""]
    if study.results.failed:
        lines += ["## Failed points", ""]
        lines += [f"- {r.get('label')} {r.get('preference')}: {r.get('error')}"
                  for r in study.results.failed]
        lines.append("")
    return "\n".join(lines)
