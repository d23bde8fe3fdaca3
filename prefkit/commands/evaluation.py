"""Evaluation as the CLI runs it: resolve tasks, score, print the table on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def evaluate_and_report(model_dir: Path, names, registry, settings, *, heads=None,
                        extra_tasks=None, quiet=False) -> dict[str, Any]:
    from prefkit.errors import DataError
    from prefkit.eval.run import evaluate_folder, results_table, task_heads
    from prefkit.progress import NullReporter, RichReporter

    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: no such model folder")
    plan = task_heads(model_dir, names, registry, extra_tasks, heads)
    reporter = NullReporter() if quiet else RichReporter(unit="examples")
    results = evaluate_folder(model_dir, plan, settings, reporter)
    if not quiet:
        click.echo(results_table(results), err=True)
    return results
