"""Run a sweep: expand it, skip the points already done (same keys), run the rest on the chosen
executor, append each result to results.jsonl as it arrives, then rebuild the report.

An interrupted sweep resumes where it stopped: finished points have their result.json (written
last), merged-but-unscored points have a complete model folder (renamed into place only when
whole), and nothing else is trusted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from prefkit.errors import PrefkitError
from prefkit.sweeps import SweepOptions
from prefkit.sweeps.point import PointJob, registry_spec
from prefkit.sweeps.points import (
    Point,
    check_sweep,
    eval_key,
    folder_name,
    input_fingerprints,
    model_key,
    standalone,
)
from prefkit.sweeps.store import POINTS, RESULTS, append_line, latest, read_json, read_results, write_atomic

log = logging.getLogger(__name__)


class SweepError(PrefkitError):
    """Some points of a sweep failed (the others ran; the report lists the failures)."""


def sweep_output(loaded, output: str | Path | None) -> Path:
    return Path(output or loaded.recipe.output or Path("runs") / loaded.path.stem)


def run_sweep(loaded, registry, *, output: str | Path | None = None, force: bool = False,
              options: SweepOptions | None = None, checked: list[Point] | None = None,
              quiet: bool = False) -> dict[str, Any]:
    """Run every point of a sweep recipe; returns the sweep's result line.

    Raises:
        RecipeError: the sweep is invalid (before anything runs).
        SweepError: some points failed; the others are stored and in the report.
    """
    from prefkit.sweeps.executors import run_jobs, torch_threads
    from prefkit.sweeps.report import write_report
    from prefkit.sweeps.tracking import open_tracker

    options = options or SweepOptions()
    points = checked if checked is not None else check_sweep(loaded, registry)
    fingerprints = input_fingerprints(loaded)
    out = sweep_output(loaded, output).resolve()
    (out / POINTS).mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sweep.yaml", yaml.safe_dump(loaded.data, sort_keys=False))
    workers = 1 if options.workers is None else options.workers
    keep = loaded.recipe.keep_models
    recorded = {(r.get("key"), r.get("eval_key")) for r in latest(_read(out)).values()
                if r.get("status") == "ok"}
    tracker = open_tracker(loaded.recipe.wandb, out, out.name,
                           {"recipe": str(loaded.path), "points": len(points)})
    jobs, counts = [], {"points": len(points), "cached": 0, "ran": 0, "failed": 0}
    try:
        for point in points:
            job, cached = _prepare(point, loaded, out, fingerprints, force, options, keep)
            if cached is None:
                jobs.append(job)
                continue
            counts["cached"] += 1
            log.info("cached  %s %s", point.label, point.preference, extra=_fields(cached))
            if (cached["key"], cached["eval_key"]) not in recorded:
                append_line(out / RESULTS, cached)
            tracker.log_point(cached)
        threads = torch_threads(workers) if workers else None
        jobs = [_with(job, threads=threads, plugins=registry_spec(registry) if workers else ())
                for job in jobs]
        log.info("%d points: %d cached, %d to run on %s (%d workers)", len(points),
                 counts["cached"], len(jobs), options.executor, workers)
        for record in run_jobs(jobs, executor=options.executor, workers=workers, registry=registry):
            _record(record, out, tracker, counts)
        report = write_report(out)
        tracker.finish(report["rows"], [Path(p) for p in report["plots"]])
    except BaseException:
        tracker.finish([], [])
        raise
    line = {"status": "ok" if not counts["failed"] else "failed", "output": str(out),
            **counts, "report": report["report"], "methods": report["rows"]}
    if counts["failed"]:
        raise SweepError(f"{out}: {counts['failed']} of {len(points)} points failed",
                         hint=f"see {out / RESULTS} and {report['report']}; re-run to retry them")
    return line


def _record(record: dict[str, Any], out: Path, tracker, counts: dict[str, int]) -> None:
    """A point's result as it arrives: appended to results.jsonl, tracked, counted, logged."""
    append_line(out / RESULTS, record)
    tracker.log_point(record)
    if record["status"] == "ok":
        counts["ran"] += 1
        log.info("done    %s %s in %.1fs", record["label"], record["preference"],
                 record["seconds"], extra=_fields(record))
    else:
        counts["failed"] += 1
        log.error("failed  %s %s: %s", record["label"], record["preference"],
                  record["error"], extra=_fields(record))


def _read(out: Path) -> list[dict[str, Any]]:
    path = out / RESULTS
    return read_results(path) if path.is_file() else []


def _with(job: PointJob, **changes: Any) -> PointJob:
    from dataclasses import replace

    return replace(job, **changes)


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("point", "label", "preference", "status", "seconds", "merged", "cached", "error")
    return {"fields": {k: record[k] for k in keys if k in record}}


def _prepare(point: Point, loaded, out: Path, fingerprints: dict[str, str], force: bool,
             options: SweepOptions, keep: bool) -> tuple[PointJob, dict[str, Any] | None]:
    """The point's folder and recipe file, and its stored result when it can be reused."""
    key = model_key(point, fingerprints)
    ekey = eval_key(key, point)
    folder = out / POINTS / folder_name(point, key)
    folder.mkdir(exist_ok=True)
    text = yaml.safe_dump(standalone(point, loaded, folder / "model"), sort_keys=False)
    recipe_file = folder / "recipe.yaml"
    if not recipe_file.is_file() or recipe_file.read_text(encoding="utf-8") != text:
        write_atomic(recipe_file, text)
    record = {"point": folder.name, "key": key, "eval_key": ekey, "label": point.label,
              "family": point.family or point.label, "grid": point.grid, "seed": point.seed,
              "merge_method": point.recipe["merge_method"],
              "parameters": point.recipe.get("parameters"), "train": point.recipe.get("train"),
              "preference": point.preference, "tasks": [m["task"] for m in point.recipe["models"]],
              "evaluate": point.recipe.get("evaluate")}
    job = PointJob(folder=str(folder), record=record, evaluate_only=options.evaluate_only,
                   force=force, keep_model=keep, cwd=os.getcwd())
    stored = read_json(folder / "result.json")
    reusable = (stored is not None and stored.get("status") == "ok"
                and stored.get("eval_key") == ekey and not force and not options.evaluate_only)
    if reusable and not keep:  # keep_models: false, also for points stored earlier
        import shutil

        shutil.rmtree(folder / "model", ignore_errors=True)
    return job, ({**stored, **record, "cached": True} if reusable else None)


def run_sweep_recipe(loaded, registry, *, output=None, force: bool = False, quiet: bool = False,
                     options: SweepOptions | None = None):
    """Run a sweep with the recipe's logging: settings (the options' win); returns a SweepResult
    (raises SweepError when some points failed, after storing the others)."""
    from prefkit.sweeps.logs import configure_logging
    from prefkit.sweeps.results import SweepResult

    options = options or SweepOptions()
    spec = loaded.recipe.logging
    configure_logging(options.log_level or (spec.level if spec else "info"),
                      options.log_format or (spec.format if spec else "simple"),
                      options.log_file or (spec.file if spec else None), quiet=quiet)
    line = run_sweep(loaded, registry, output=output, force=force, options=options, quiet=quiet)
    out = Path(line["output"])
    return SweepResult(out, list(latest(_read(out)).values()), Path(line["report"]), line)


def describe(line: dict[str, Any]) -> str:
    """One stderr line for a finished sweep."""
    return (f"sweep {line['output']}: {line['points']} points ({line['cached']} cached, "
            f"{line['ran']} run, {line['failed']} failed); report {line['report']}")

