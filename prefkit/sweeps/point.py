"""One sweep point, in whatever process runs it (this one, a pool worker, a Ray worker).

A job carries only plain, picklable data: the point folder (whose recipe.yaml is an ordinary
recipe), what to do, and how to rebuild the plugin registry on the other side (plugin modules
by import name, other plugin objects pickled). `run_point` never raises for a point's own
failure: it returns a record with status "failed", so the rest of the sweep goes on.
"""

from __future__ import annotations

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
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.sweeps.store import write_atomic

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


def run_point(job: PointJob, registry=None) -> dict[str, Any]:
    """Merge (or reuse the stored model), score, record. Returns the result record."""
    started = time.perf_counter()
    try:
        if job.cwd and os.getcwd() != job.cwd:
            os.chdir(job.cwd)
        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        registry = registry if registry is not None else registry_from_spec(job.plugins)
        results, merged = _score(job, registry)
    except PrefkitError as exc:
        return failed(job, str(exc), time.perf_counter() - started, exit_code=int(exc.exit_code))
    except Exception as exc:  # a bug in a method or plugin: the rest of the sweep goes on
        log.debug("point %s failed:\n%s", job.folder, traceback.format_exc())
        return failed(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - started,
                      traceback=traceback.format_exc())
    folder = Path(job.folder)
    model = folder / "model"
    record = {**job.record, "status": "ok", "results": results, "merged": merged, "cached": False,
              "model": str(model) if job.keep_model else None,
              "seconds": round(time.perf_counter() - started, 3), "time": _now()}
    write_atomic(folder / "result.json", json.dumps(record, indent=2) + "\n")
    if not job.keep_model:
        shutil.rmtree(model, ignore_errors=True)
    return record


def _score(job: PointJob, registry) -> tuple[dict[str, Any], bool]:
    """(per-task results, whether a merge ran). A complete model folder (the executor renames it
    into place only when whole) is re-scored, not merged again, unless forced."""
    from prefkit import runner
    from prefkit.recipe import load_recipe

    folder = Path(job.folder)
    model = folder / "model"
    loaded = load_recipe(folder / "recipe.yaml")
    stored = (model / "prefkit.json").is_file()
    if job.evaluate_only and not stored:
        raise PrefkitError(f"{folder.name}: no stored model to re-score",
                           hint="run the sweep without --evaluate-only (keep_models: true keeps them)")
    if stored and (job.evaluate_only or not job.force):
        return runner.evaluate_output(loaded, model, registry, True)["tasks"], False
    result = runner.run_recipe(loaded, registry, output=model, force=True,
                               options=runner.RunOptions(quiet=True))
    return result.scores, True
