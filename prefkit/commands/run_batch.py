"""`prefkit run`: validate every recipe first, then run each, keep going after a failure."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from prefkit.engine.executor import DEFAULT_SHARD_BYTES
from prefkit.errors import ExitCode, PrefkitError


def run_batch(recipes, registry, *, output, overrides, force, quiet, max_shard_bytes,
              report: Callable[[PrefkitError], None], sweep=None, allow_pickle: bool = False,
              allow_nonfinite: bool = False, threads: int | None = None,
              device: str = "cpu") -> int:
    """Run recipes; print one JSON line per recipe on stdout; return the worst exit code.
    A sweep recipe (preferences:/methods:) runs all its points, with `sweep` (SweepOptions)."""
    from prefkit.commands.sweep_run import check_recipe, run_sweep_recipe
    from prefkit.recipe import load_recipe
    from prefkit.sweeps import SweepOptions, is_sweep

    sweep = sweep or SweepOptions()

    checked = []
    for path in recipes:
        try:
            loaded = load_recipe(path, overrides)
            check_recipe(loaded, registry, sweep)
            checked.append((path, loaded, None))
        except PrefkitError as exc:
            checked.append((path, None, exc))
    worst = ExitCode.OK
    for path, loaded, error in checked:
        if error is None:
            try:
                if is_sweep(loaded):
                    line = run_sweep_recipe(loaded, registry, output=output, force=force,
                                            quiet=quiet, options=sweep)
                else:
                    line = run_recipe(loaded, registry, output=output, force=force, quiet=quiet,
                                      max_shard_bytes=max_shard_bytes, allow_pickle=allow_pickle,
                                      allow_nonfinite=allow_nonfinite, threads=threads,
                                      device=device)
                click.echo(json.dumps({"recipe": path, **line}))
                continue
            except PrefkitError as exc:
                error = exc
        report(error)
        worst = max(worst, error.exit_code)
        click.echo(json.dumps({"recipe": path, "status": "failed",
                               "exit_code": int(error.exit_code), "error": error.message}))
    return int(worst)


def run_recipe(loaded, registry, *, output: str | Path | None = None, force: bool = False,
               quiet: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
               allow_pickle: bool = False, allow_nonfinite: bool = False,
               threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Run one loaded recipe, whatever its method's kind, then its `evaluate:` step.

    `allow_pickle` reads pickle checkpoints (weights_only); `allow_nonfinite` merges NaN/Inf inputs.
    `threads` and `device` set where a tensor method's merge runs (see `prefkit.engine.executor.execute`).

    Returns the result line (status, output, method, tensors, bytes, seconds and, with
    `evaluate:`, per-task results). Raises PrefkitError; nothing is left half written.
    """
    from prefkit.engine.executor import execute
    from prefkit.progress import NullReporter, RichReporter
    from prefkit.recipe.plan import resolve

    plan = resolve(loaded, registry, output, allow_pickle=allow_pickle)
    reporter = NullReporter() if quiet else RichReporter()
    for note in plan.notes:
        reporter.note(note)
    if plan.method.method.kind == "trainer":
        line = _train(plan, loaded, registry, reporter, force, max_shard_bytes)
    elif plan.method.method.kind == "solver":
        line = _solve(plan, loaded, registry, reporter, force, max_shard_bytes, allow_nonfinite)
    else:
        result = execute(plan, reporter=reporter, force=force, max_shard_bytes=max_shard_bytes,
                         allow_nonfinite=allow_nonfinite, threads=threads, device=device)
        line = _line(plan, result)
    if loaded.recipe.evaluate is not None:
        line["results"] = evaluate_output(loaded, Path(line["output"]), registry, quiet)["tasks"]
    return line


def _line(plan, result) -> dict[str, Any]:
    return {"status": "ok", "output": str(result.output), "method": plan.method.method.name,
            "tensors": result.tensors, "bytes": result.bytes_written,
            "seconds": round(result.seconds, 3)}


def _train(plan, loaded, registry, reporter, force, max_shard_bytes) -> dict[str, Any]:
    """Trainer methods: train (or reuse the cached model), then write it like any merge. An
    output folder already written from the same trained model is kept as it is."""
    from dataclasses import replace

    from prefkit.engine.executor import execute
    from prefkit.eval.run import inline_tasks
    from prefkit.progress import RichReporter
    from prefkit.train import train_plan

    steps = RichReporter(reporter.console, unit="steps") if isinstance(reporter, RichReporter) else reporter
    trained = train_plan(plan, registry, reporter=steps,
                         extra_tasks=inline_tasks(loaded.recipe.tasks))
    training = {"model": str(trained.files.model), "log": str(trained.files.log),
                "cached": trained.cached, **trained.summary}
    line = {"status": "ok", "output": str(plan.output), "method": plan.method.method.name,
            "training": training}
    provenance = plan.output / "prefkit.json"
    if provenance.is_file() and not force:
        previous = json.loads(provenance.read_text()).get("training", {})
        if previous.get("model") == training["model"]:
            reporter.note(f"{plan.output}: already written from {trained.files.model}")
            return line
    plan = replace(plan, inputs=tuple(replace(m, labels=tuple(trained.labels[m.task]))
                                      for m in plan.inputs))
    result = execute(plan, reporter=reporter, force=force, max_shard_bytes=max_shard_bytes,
                     weights=trained.weights, task_heads=trained.task_heads or None,
                     provenance={"training": training})
    return {**_line(plan, result), "training": training}


def _solve(plan, loaded, registry, reporter, force, max_shard_bytes, allow_nonfinite):
    """Solver methods (AdaMerging): learn the coefficients, then the streaming executor applies
    them through the method's `merge`; the solution is saved as `<output>/<method>.json`."""
    from prefkit.api import SolveContext
    from prefkit.engine.executor import execute
    from prefkit.errors import OutputError
    from prefkit.eval.run import inline_tasks
    from prefkit.io.outdir import check_replaceable, recover_interrupted
    from prefkit.moo import normalize_preference
    from prefkit.progress import RichReporter

    for note in recover_interrupted(plan.output):  # the executor's output checks, before
        reporter.note(note)                         # minutes of learning rather than after
    if plan.output.exists() and not force:
        raise OutputError(f"output {plan.output} already exists",
                          hint="pass --force to replace it, or -o")
    if plan.output.exists():
        check_replaceable(plan.output)
    method = plan.method.method
    extra = inline_tasks(loaded.recipe.tasks)
    tasks = tuple(extra.get(m.task) or registry.task(m.task).task for m in plan.inputs)
    preference = normalize_preference(loaded.recipe.preference or [1.0] * len(tasks), len(tasks))
    steps = RichReporter(reporter.console, unit="steps") if isinstance(reporter, RichReporter) else reporter
    solution = method.solve(SolveContext(plan, tasks, tuple(preference.tolist()), plan.train, steps))
    file = f"{method.name}.json"
    result = execute(plan, reporter=reporter, force=force, max_shard_bytes=max_shard_bytes,
                     allow_nonfinite=allow_nonfinite, state=solution.state,
                     provenance={"solver": solution.summary},
                     files={file: json.dumps(solution.state, indent=1) + "\n"})
    return {**_line(plan, result), "solver": {"file": str(plan.output / file), **solution.summary}}


def evaluate_output(loaded, output, registry, quiet):
    """The recipe's `evaluate:` step on a merged output (sweeps re-score stored models with it)."""
    from prefkit.commands.evaluation import evaluate_and_report
    from prefkit.eval.evaluate import EvalSettings
    from prefkit.eval.run import inline_tasks

    spec = loaded.recipe.evaluate
    settings = EvalSettings(spec.split, spec.num_samples, spec.batch_size, spec.max_length,
                            spec.device, spec.seed)
    return evaluate_and_report(output, spec.tasks, registry, settings, heads=loaded.recipe.heads,
                               extra_tasks=inline_tasks(loaded.recipe.tasks), quiet=quiet)
