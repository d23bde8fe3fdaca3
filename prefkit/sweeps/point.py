"""One sweep point, in whatever process runs it (this one, a pool worker, a Ray worker).

A job carries only plain, picklable data: the point folder (whose recipe.yaml is an ordinary
recipe), what to do, and how to rebuild the plugin registry on the other side (plugin modules
by import name, other plugin objects pickled). `run_point` never raises for a point's own
failure: it returns a record with status "failed", so the rest of the sweep goes on.

An unkept tensor merge is merged and scored in memory with the worker's kept state
(`prefkit.sweeps.worker`); everything else runs `prefkit run`'s way and is scored from disk.
Either way the record has `results` (with each task's `loss`), `examples` (examples.npz in the
point folder: per task `<task>.index`, `.correct`, `.loss`, `.prediction`), `cost` (wall, CPU,
merge, eval and training seconds, examples seen, device, threads) and `learned` (a solver's or
trainer's summary, None for merges).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prefkit.errors import PrefkitError
from prefkit.sweeps.store import write_atomic

if TYPE_CHECKING:
    from prefkit.sweeps.worker import PointScores

EXAMPLES = "examples.npz"

log = logging.getLogger(__name__)
_REGISTRIES: dict[tuple, Any] = {}  # one registry per process and plugin set


def registry_spec(registry) -> tuple[tuple[str, Any], ...]:
    """How to rebuild `registry` in another process: (plugin name, module name or object)."""
    spec = []
    for name, plugin in registry.pm.list_name_plugin():
        spec.append((name, f"module:{plugin.__name__}" if isinstance(plugin, ModuleType) else plugin))
    return tuple(spec)


def registry_from_spec(spec: tuple[tuple[str, Any], ...]):
    key = tuple((n, p if isinstance(p, str) else id(p)) for n, p in spec)
    if key not in _REGISTRIES:
        from prefkit.registry import load_registry

        plugins = {name: importlib.import_module(p.removeprefix("module:"))
                   if isinstance(p, str) and p.startswith("module:") else p for name, p in spec}
        _REGISTRIES[key] = load_registry(entry_points=False, plugins=plugins)
    return _REGISTRIES[key]


@dataclass(frozen=True)
class PointJob:
    folder: str  # absolute: <output>/points/<name>, holding recipe.yaml
    record: dict[str, Any]  # what the result record says about the point (label, method, keys)
    evaluate_only: bool = False
    force: bool = False
    keep_model: bool = True
    cwd: str = ""  # relative data paths (e.g. a task's data_files) are read from here
    threads: int | None = None  # torch threads in a worker process
    plugins: tuple[tuple[str, Any], ...] = field(default=())


def failed(job: PointJob, error: str, seconds: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {**job.record, "status": "failed", "error": error, "seconds": round(seconds, 3),
            "time": _now(), **extra}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_point(job: PointJob, registry=None, session=None) -> dict[str, Any]:
    """Merge (or reuse the stored model), score, record. Returns the result record.

    `session`: the `EvalSession` to keep state in (default: the one this process keeps, else
    a fresh one for this point)."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    try:
        if job.cwd and os.getcwd() != job.cwd:
            os.chdir(job.cwd)
        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        registry = registry if registry is not None else registry_from_spec(job.plugins)
        outcome = _scored(job, registry, session)
        folder = Path(job.folder)
        if outcome.examples is not None:
            write_examples(folder / EXAMPLES, outcome.examples)
    except PrefkitError as exc:
        return failed(job, str(exc), time.perf_counter() - started, exit_code=int(exc.exit_code))
    except Exception as exc:  # a bug in a method or plugin: the rest of the sweep goes on
        log.debug("point %s failed:\n%s", job.folder, traceback.format_exc())
        return failed(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - started,
                      traceback=traceback.format_exc())
    model = folder / "model"
    wall = time.perf_counter() - started
    record = {**job.record, "status": "ok", "results": outcome.results, "merged": outcome.merged,
              "cached": False, "model": str(model) if job.keep_model else None,
              "seconds": round(wall, 3), "time": _now(),
              "examples": EXAMPLES if outcome.examples is not None else None,
              "cost": _cost(outcome, wall, _cpu_seconds() - cpu), "learned": outcome.learned}
    write_atomic(folder / "result.json", json.dumps(record, indent=2) + "\n")
    if not job.keep_model:
        shutil.rmtree(model, ignore_errors=True)
    return record


def _scored(job: PointJob, registry, session) -> PointScores:
    """The point's scores. A complete model folder (the executor renames it into place only
    when whole) is re-scored, not merged again, unless forced; an unkept tensor merge is
    merged and scored in memory."""
    from prefkit.recipe import load_recipe
    from prefkit.sweeps import worker

    folder = Path(job.folder)
    model = folder / "model"
    loaded = load_recipe(folder / "recipe.yaml")
    stored = (model / "prefkit.json").is_file()
    if job.evaluate_only and not stored:
        raise PrefkitError(f"{folder.name}: no stored model to re-score",
                           hint="run the sweep without --evaluate-only (keep_models: true keeps them)")
    rescore = stored and (job.evaluate_only or not job.force)
    if not (rescore or job.keep_model or worker.on_disk_forced()):
        kept = session or worker.current()
        with contextlib.nullcontext(kept) if kept is not None else worker.keeping() as use:
            scored = worker.in_memory(loaded, registry, model, use)
        if scored is not None:
            return scored
    return _on_disk(loaded, registry, model, rescore)


def _on_disk(loaded, registry, model: Path, rescore: bool) -> PointScores:
    """`prefkit run`'s way (or re-scoring the stored model), its evaluation's per-example
    arrays collected as it runs."""
    from prefkit import runner
    from prefkit.eval.evaluate import collect_examples, resolve_device

    started = time.perf_counter()
    with collect_examples() as evals:
        if rescore:
            results = runner.evaluate_output(loaded, model, registry, True)["tasks"]
            learned = _stored_learned(model)
        else:
            run = runner.run_recipe(loaded, registry, output=model, force=True,
                                    options=runner.RunOptions(quiet=True))
            results, line = run.scores, run.line
            learned = line.get("solver") or line.get("training")
    wall = time.perf_counter() - started
    examples = {task: arrays for e in evals for task, arrays in e.examples.items()} or None
    eval_s = sum(e.seconds for e in evals)
    spec = loaded.recipe.evaluate
    device = evals[-1].device if evals else resolve_device(spec.device if spec else "auto")
    from prefkit.sweeps.worker import PointScores

    out = PointScores(results, examples, 0.0, eval_s, device, not rescore, learned)
    if learned is not None:
        out.train_s = float(learned.get("seconds") or 0.0)
        out.train_cached = rescore or bool(learned.get("cached"))
        out.train_examples = _train_examples(loaded, registry, learned)
    if not rescore:
        out.merge_s = max(0.0, wall - eval_s - (0.0 if out.train_cached else out.train_s))
    return out


def _stored_learned(model: Path) -> dict[str, Any] | None:
    """What a stored model's prefkit.json says of its solving or training."""
    provenance = json.loads((model / "prefkit.json").read_text())
    return provenance.get("solver") or provenance.get("training")


def _train_examples(loaded, registry, learned: dict[str, Any]) -> int:
    """Examples drawn in training or solving: every step takes a batch from every task."""
    method = registry.get(loaded.recipe.merge_method).method
    batch = getattr(method.Settings.model_validate(loaded.recipe.train or {}), "batch_size", None)
    if batch is None:  # a method without batches
        return 0
    tasks = learned.get("tasks") or [m.task for m in loaded.recipe.models]
    return int(learned.get("steps") or 0) * int(batch) * len(tasks)


def _cost(o: PointScores, wall: float, cpu: float) -> dict[str, Any]:
    import torch

    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "merge_s": round(o.merge_s, 3),
            "eval_s": round(o.eval_s, 3), "train_s": round(o.train_s, 3),
            "train_cached": o.train_cached, "train_examples": o.train_examples,
            "eval_examples": sum(int(r.get("n", 0)) for r in (o.results or {}).values()),
            "device": o.device, "threads": torch.get_num_threads()}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_examples(path: Path, examples: dict[str, dict[str, Any]]) -> None:
    """examples.npz (compressed): `<task>.<array>` for each task, through a temporary sibling."""
    import numpy as np

    arrays = {f"{task}.{key}": value for task, per in examples.items() for key, value in per.items()}
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
