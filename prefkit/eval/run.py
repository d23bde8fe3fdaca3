"""Evaluate a model folder on tasks and write `results.json` beside it.

For a folder that prefkit merged, `prefkit.json` says which input model was tuned for which task
and each input's label names, so every task is scored through its own model's label order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefkit.api import Task
from prefkit.errors import DataError
from prefkit.eval.evaluate import EvalSettings, TaskHead, evaluate
from prefkit.eval.labels import label_order
from prefkit.io.outdir import write_atomic
from prefkit.progress import Reporter
from prefkit.registry import Registry


def inline_tasks(spec: dict[str, Any] | None) -> dict[str, Task]:
    """Tasks a recipe defines under `tasks:` (validated by the recipe schema)."""
    out = {}
    for name, t in (spec or {}).items():
        out[name] = Task(name=name, dataset=t.dataset, text_fields=tuple(t.text_fields),
                         label_names=tuple(t.label_names), label_field=t.label_field,
                         splits=dict(t.splits), data_files=t.data_files, config_name=t.config_name,
                         summary="defined in the recipe")
    return out


def plan_tasks(plan, registry: Registry, extra_tasks: dict[str, Task] | None = None) -> list[Task]:
    """Each input model's task, in recipe order: defined inline (`tasks:`), else registered."""
    extra = inline_tasks(plan.inline_tasks) if extra_tasks is None else extra_tasks
    return [extra.get(m.task) or registry.task(m.task).task for m in plan.inputs]


def task_heads(model_dir: Path, names: list[str] | None, registry: Registry,
               extra_tasks: dict[str, Task] | None = None, heads: str | None = None) -> list[TaskHead]:
    """What to score: each task with its label order (and its own head, for per-task heads)."""
    return choose_heads(str(model_dir), _read_json(model_dir / "prefkit.json"),
                        _read_json(model_dir / "config.json") or {}, names, registry, extra_tasks,
                        heads, lambda task: _task_head(model_dir, task))


def choose_heads(where: str, provenance: dict | None, config: dict, names: list[str] | None,
                 registry: Registry, extra_tasks: dict[str, Task] | None, heads: str | None,
                 task_head: Callable[[str], dict[str, Any]]) -> list[TaskHead]:
    """`task_heads` from what a model folder holds: its prefkit.json (`provenance`, None when
    prefkit did not write it) and config.json; `task_head(task)` gives a task's own head tensors.
    A sweep worker passes the same for a merge it holds in memory."""
    extra_tasks = extra_tasks or {}
    by_task = {i["task"]: i for i in (provenance or {}).get("inputs", []) if i.get("task")}
    if names is None:
        if not by_task:
            raise DataError(f"{where}: no tasks to evaluate", hint="pass --tasks a,b")
        names = list(by_task)
    heads = heads or (provenance or {}).get("heads", "padded")
    out = []
    for name in names:
        task = extra_tasks.get(name) or registry.task(name).task
        source = by_task.get(name)
        if provenance is not None and source is None:
            raise DataError(f"{where}: no input model was tuned for task {name!r}",
                            hint=f"its tasks: {', '.join(by_task) or 'none'}")
        if source is not None:
            order = label_order(task, id2label=source.get("id2label"), model_id=source["model"],
                                override=source.get("labels"))
        else:
            order = label_order(task, id2label=config.get("id2label"), model_id=where)
        head = task_head(name) if heads == "per_task" and source is not None else None
        out.append(TaskHead(task, order, head))
    return out


def _task_head(model_dir: Path, task: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    file = model_dir / "heads" / f"{task}.safetensors"
    if not file.exists():
        raise DataError(f"{file} is missing", hint="merge with heads: per_task to keep task heads")
    return load_file(str(file))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc


def evaluate_folder(model_dir: Path, heads: list[TaskHead], settings: EvalSettings,
                    reporter: Reporter | None = None) -> dict[str, Any]:
    """Evaluate and write `results.json` (per-task metrics, preference, method, parameters)."""
    scores = evaluate(model_dir, heads, settings, reporter)
    provenance = _read_json(model_dir / "prefkit.json") or {}
    recipe = {}
    if (model_dir / "recipe.yaml").exists():
        import yaml

        recipe = yaml.safe_load((model_dir / "recipe.yaml").read_text()) or {}
    results = {
        "model": str(model_dir),
        "fingerprint": provenance.get("plan_sha256"),
        "method": provenance.get("method"),
        "parameters": recipe.get("parameters"),
        "preference": provenance.get("preference"),
        "heads": "per_task" if any(h.head for h in heads) else "padded",
        "settings": {"split": settings.split, "num_samples": settings.num_samples,
                     "max_length": settings.max_length, "seed": settings.seed},
        "tasks": scores,
    }
    write_atomic(model_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def results_table(results: dict[str, Any]) -> str:
    """A plain per-task table for stderr."""
    lines = [f"{'task':<20} {'n':>6} {'accuracy':>9} {'macro_f1':>9} {'majority':>9}"]
    for name, r in results["tasks"].items():
        lines.append(f"{name:<20} {r['n']:>6} {r.get('accuracy', float('nan')):>9.4f} "
                     f"{r.get('macro_f1', float('nan')):>9.4f} {r['majority']:>9.4f}")
    return "\n".join(lines)


def score_folder(model_dir: Path, names: list[str] | None, registry: Registry,
                 settings: EvalSettings, *, heads: str | None = None,
                 extra_tasks: dict[str, Task] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Score a model folder on tasks (`task_heads` picks each task's head and label order) and
    write results.json beside it; unless `quiet`, progress and the table go to stderr."""
    import sys

    from prefkit.progress import NullReporter, RichReporter

    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: no such model folder")
    chosen = task_heads(model_dir, names, registry, extra_tasks, heads)
    reporter = NullReporter() if quiet else RichReporter(unit="examples")
    results = evaluate_folder(model_dir, chosen, settings, reporter)
    if not quiet:
        print(results_table(results), file=sys.stderr)
    return results
