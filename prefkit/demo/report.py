"""The demo's comparison table: per task, the majority-class baseline, the pretrained base (with
each task's own head), each fine-tuned model on its own task, and every merged model.

    python -m prefkit.demo.report ZOO RUN_DIR...

Each RUN_DIR is a merge output with `results.json` (from a recipe with `evaluate:`); a run named
`*base*` is shown as the base. The fine-tuned models are scored with the same settings (split,
subset, seed) and their `results.json` is kept in their folders, so a second call is instant.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def finetuned_results(zoo: Path, task: str, settings: dict, registry) -> dict:
    """A fine-tuned model scored on its own task (cached in its folder by settings)."""
    from prefkit.eval.evaluate import EvalSettings
    from prefkit.eval.run import evaluate_folder, task_heads

    folder = zoo / task
    cached = folder / "results.json"
    if cached.exists():
        old = json.loads(cached.read_text())
        if old.get("settings") == settings and task in old.get("tasks", {}):
            return old["tasks"][task]
    eval_settings = EvalSettings(split=settings["split"], num_samples=settings["num_samples"],
                                 max_length=settings["max_length"], seed=settings["seed"])
    heads = task_heads(folder, [task], registry)
    return evaluate_folder(folder, heads, eval_settings)["tasks"][task]


def table(zoo: Path, runs: Sequence[Path], registry) -> str:
    results = {run: json.loads((run / "results.json").read_text()) for run in runs}
    tasks = list(dict.fromkeys(t for r in results.values() for t in r["tasks"]))
    settings = next(iter(results.values()))["settings"]
    names = [("base" if "base" in run.name else run.name) for run in runs]
    header = ["task", "majority", "fine-tuned", *names]
    rows = []
    tuned_all = []
    for task in tasks:
        first = next(r["tasks"][task] for r in results.values() if task in r["tasks"])
        tuned = finetuned_results(zoo, task, settings, registry)["accuracy"]
        tuned_all.append(tuned)
        cells = [task, f"{first['majority']:.3f}", f"{tuned:.3f}"]
        cells += [f"{r['tasks'][task]['accuracy']:.3f}" if task in r["tasks"] else "-"
                  for r in results.values()]
        rows.append(cells)
    means = ["mean", "", f"{sum(tuned_all) / len(tuned_all):.3f}"]
    for r in results.values():
        accs = [r["tasks"][t]["accuracy"] for t in tasks if t in r["tasks"]]
        means.append(f"{sum(accs) / len(accs):.3f}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, means)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in (header, *rows, means)]
    split = f"accuracy on {settings['split']}" + (
        f", {settings['num_samples']} examples per task" if settings.get("num_samples") else "")
    return "\n".join([split, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    from prefkit.registry import load_registry

    parser = argparse.ArgumentParser(prog="python -m prefkit.demo.report", description=__doc__.split("\n")[0])
    parser.add_argument("zoo", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print(table(args.zoo, args.runs, load_registry()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
