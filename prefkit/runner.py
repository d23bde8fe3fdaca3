"""Running one recipe, as library code (no click): merge, solve or train, then its `evaluate:`
step. `prefkit.batch` (batches, sweeps and the Python API) and every sweep point come here.

The three method kinds fork here (DESIGN §1): a tensor method is streamed by the executor; a
solver learns coefficients that the executor then applies through the method's `merge`; a trainer
fine-tunes (or reuses its cached model) and the executor writes the weights it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefkit.engine import executor  # executor.execute, looked up at each call (tests wrap it)
from prefkit.engine.executor import DEFAULT_SHARD_BYTES, ExecuteOptions
from prefkit.recipe.loader import LoadedRecipe
from prefkit.recipe.plan import Plan


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe (the command line's options), not what to run (the recipe)."""

    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    allow_pickle: bool = False  # read pickle checkpoints (weights_only)
    allow_nonfinite: bool = False  # merge inputs that hold NaN/Inf
    threads: int | None = None  # merge threads (None: all cores)
    device: str = "cpu"  # where a tensor method's arithmetic runs
    quiet: bool = False  # no progress, notes or tables on stderr


@dataclass(frozen=True)
class RunResult:
    """One recipe's run: `line` is the JSON line `prefkit run` prints for it."""

    output: Path | None
    method: str
    preference: tuple[float, ...] | None  # normalised; None when the recipe gives none
    scores: dict[str, dict[str, Any]] | None  # task → metrics, with `evaluate:`
    seconds: float | None  # the merge's (None: a trained model already written)
    line: dict[str, Any]


def run_recipe(loaded: LoadedRecipe, registry, *, output=None, force: bool = False,
               options: RunOptions | None = None) -> RunResult:
    """Run one (non-sweep) recipe, whatever its method's kind, then its `evaluate:` step.

    Raises PrefkitError; nothing is left half written.
    """
    from prefkit.progress import NullReporter, RichReporter
    from prefkit.recipe.resolve import resolve

    options = options or RunOptions()
    plan = resolve(loaded, registry, output, allow_pickle=options.allow_pickle)
    reporter = NullReporter() if options.quiet else RichReporter()
    for note in plan.notes:
        reporter.note(note)
    kind = plan.method.method.kind
    if kind == "trainer":
        line = _train(plan, registry, reporter, force, options)
    elif kind == "solver":
        line = _solve(plan, registry, reporter, force, options)
    else:
        result = executor.execute(plan, ExecuteOptions(
            force=force, max_shard_bytes=options.max_shard_bytes,
            allow_nonfinite=options.allow_nonfinite, threads=options.threads,
            device=options.device), reporter=reporter)
        line = _line(plan, result)
    scores = None
    if plan.evaluate is not None:
        scores = evaluate_output(plan, Path(line["output"]), registry, options.quiet)["tasks"]
        line["results"] = scores
    return RunResult(output=Path(line["output"]), method=line["method"],
                     preference=plan.preference.normalised if plan.preference else None,
                     scores=scores, seconds=line.get("seconds"), line=line)


def evaluate_output(source: Plan | LoadedRecipe, output: Path, registry, quiet: bool):
    """The recipe's `evaluate:` step on a written output (sweeps re-score stored models with
    it, from the point's recipe: `source` is a Plan or a loaded recipe)."""
    from prefkit.eval.evaluate import EvalSettings
    from prefkit.eval.run import inline_tasks, score_folder

    if isinstance(source, LoadedRecipe):
        spec, heads, tasks = source.recipe.evaluate, source.recipe.heads, source.recipe.tasks
    else:
        spec, heads, tasks = source.evaluate, source.heads, source.inline_tasks
    settings = EvalSettings(spec.split, spec.num_samples, spec.batch_size, spec.max_length,
                            spec.device, spec.seed)
    return score_folder(output, spec.tasks, registry, settings, heads=heads,
                        extra_tasks=inline_tasks(tasks), quiet=quiet)


def _line(plan: Plan, result) -> dict[str, Any]:
    return {"status": "ok", "output": str(result.output), "method": plan.method.method.name,
            "tensors": result.tensors, "bytes": result.bytes_written,
            "seconds": round(result.seconds, 3)}


def _steps(reporter):
    """Training and solving report steps, not bytes."""
    from prefkit.progress import RichReporter

    return RichReporter(reporter.console, unit="steps") if isinstance(reporter, RichReporter) else reporter


def _train(plan: Plan, registry, reporter, force: bool, options: RunOptions) -> dict[str, Any]:
    """Trainer methods: train (or reuse the cached model), then write it like any merge. An
    output folder already written from the same trained model is kept as it is."""
    from prefkit.train import train_plan

    trained = train_plan(plan, registry, reporter=_steps(reporter))
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
    # a trained model is written as it is (on the CPU; its tensors are checked finite)
    given = ExecuteOptions(force=force, max_shard_bytes=options.max_shard_bytes,
                           weights=trained.weights, task_heads=trained.task_heads or None,
                           provenance={"training": training})
    result = executor.execute(plan, given, reporter=reporter)
    return {**_line(plan, result), "training": training}


def _solve(plan: Plan, registry, reporter, force: bool, options: RunOptions) -> dict[str, Any]:
    """Solver methods (AdaMerging): learn the coefficients, then the streaming executor applies
    them through the method's `merge`; the solution is saved as `<output>/<method>.json`."""
    from prefkit.io.outdir import claim_output

    # The executor's output checks, before minutes of learning rather than after; the output's
    # lock is held from here to the end (the executor takes it again, re-entrantly).
    with claim_output(plan.output, force, reporter.note):
        return _solve_owned(plan, registry, reporter, force, options)


def _solve_owned(plan: Plan, registry, reporter, force: bool, options: RunOptions) -> dict[str, Any]:
    from prefkit.api import SolveContext
    from prefkit.eval.run import plan_tasks

    method = plan.method.method
    tasks = tuple(plan_tasks(plan, registry))
    solution = method.solve(SolveContext(plan, tasks, plan.task_preference, plan.train,
                                         _steps(reporter)))
    file = f"{method.name}.json"
    # the learned coefficients are applied on the CPU with the merge's default threads
    solved = ExecuteOptions(force=force, max_shard_bytes=options.max_shard_bytes,
                            allow_nonfinite=options.allow_nonfinite, state=solution.state,
                            provenance={"solver": solution.summary},
                            files={file: json.dumps(solution.state, indent=1) + "\n"})
    result = executor.execute(plan, solved, reporter=reporter)
    return {**_line(plan, result), "solver": {"file": str(plan.output / file), **solution.summary}}
