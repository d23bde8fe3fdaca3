"""Batches, sweeps and the Python API: validate every recipe first, then run each (a sweep runs
all its points), going on after a failure. Library code (no click): `prefkit run` prints what
these return, and `prefkit.run` / `prefkit.sweep` are the same calls for a notebook.

    import prefkit
    result = prefkit.run("recipes/offline/ties_pref.yaml", output="runs/ties", force=True)
    result.output, result.method, result.preference, result.scores, result.seconds
    study = prefkit.sweep("recipes/demo/sweep.yaml")
    study.points, study.front("ties"), study.hypervolume("ties")
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError, RecipeError
from prefkit.recipe.loader import MAPPING, LoadedRecipe
from prefkit.runner import RunOptions, RunResult, run_recipe
from prefkit.sweeps import SweepOptions, is_sweep

_OPTIONS = {f.name for f in fields(RunOptions)}
_SWEEP_OPTIONS = {"executor", "workers", "evaluate_only", "log_level", "log_format", "log_file"}


def run(recipe, *, output=None, force: bool = False, overrides=(), registry=None,
        **options: Any) -> RunResult:
    """Run one recipe (a path, or a mapping whose relative paths are read from the working
    folder): merge, solve or train, then its `evaluate:` step.

    `overrides` are `--set` assignments (``["parameters.density=0.3"]``); `options` are
    RunOptions' fields (max_shard_bytes, allow_pickle, allow_nonfinite, threads, device, quiet).
    `registry`: the plugin registry (default: every installed plugin).

    Raises:
        PrefkitError: the same one-line message `prefkit run` prints (str(error)); nothing is
            left half written.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"prefkit.run() got unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(_OPTIONS))}")
    loaded = _load_for(recipe, overrides, output)
    if is_sweep(loaded):
        raise loaded.error((), "this recipe is a sweep (preferences: or methods:)",
                           "run it with prefkit.sweep()")
    registry = registry if registry is not None else default_registry()
    check_recipe(loaded, registry)
    return run_recipe(loaded, registry, output=output, force=force, options=RunOptions(**options))


def sweep(recipe, *, output=None, force: bool = False, overrides=(), registry=None,
          quiet: bool = False, **options: Any):
    """Run every point of a sweep recipe (cached and resumable as with `prefkit run`); returns
    a SweepResult: `.points` (one record per point: method, parameters, preference, seed,
    scores, cost), `.front(method)`, `.hypervolume(method)`, `.report` (report.md).

    `options` are SweepOptions' fields (executor, workers, evaluate_only, log_level, ...).

    Raises:
        PrefkitError: the recipe is invalid, or some points failed (SweepError, after the
            others were stored).
    """
    unknown = sorted(set(options) - _SWEEP_OPTIONS)
    if unknown:
        raise TypeError(f"prefkit.sweep() got unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(_SWEEP_OPTIONS))}")
    loaded = _load_for(recipe, overrides, output)
    if not is_sweep(loaded):
        raise loaded.error((), "this recipe is not a sweep (no preferences: or methods:)",
                           "run it with prefkit.run(), or add preferences:")
    registry = registry if registry is not None else default_registry()
    sweep_options = SweepOptions(**options)
    check_recipe(loaded, registry, sweep_options)
    return run_loaded(loaded, registry, output=output, force=force,
                      options=RunOptions(quiet=quiet), sweep=sweep_options)


@functools.cache
def default_registry():
    """Every installed plugin (entry points), loaded once per process."""
    from prefkit.registry import load_registry

    return load_registry()


def check_recipe(loaded: LoadedRecipe, registry, sweep: SweepOptions | None = None) -> None:
    """Checks that need no checkpoint, for a sweep (every point) or a plain recipe.

    Raises:
        RecipeError / RecipeErrors: located in the recipe file.
    """
    from prefkit.recipe.resolve import check
    from prefkit.sweeps.points import check_plain, check_sweep

    if is_sweep(loaded):
        check_sweep(loaded, registry)
        return
    check_plain(loaded)
    if sweep is not None and not sweep.is_default:
        raise loaded.error((), "--executor, --workers and --evaluate-only apply to sweeps only",
                           "add preferences: (or methods:) to make this recipe a sweep")
    check(loaded, registry)


def run_batch(paths, registry, *, overrides=(), output=None, force: bool = False,
              options: RunOptions | None = None, sweep: SweepOptions | None = None,
              ) -> Iterator[tuple[str, RunResult | Any | None, PrefkitError | None]]:
    """Validate every recipe first, then run each, going on after a failure: yields
    (path, RunResult or SweepResult, None) or (path, None, error) in order."""
    checked = []
    for path in paths:
        try:
            loaded = load(path, overrides)
            check_recipe(loaded, registry, sweep)
            checked.append((path, loaded, None))
        except PrefkitError as exc:
            checked.append((path, None, exc))
    for path, loaded, error in checked:
        if error is not None:
            yield path, None, error
            continue
        try:
            yield path, run_loaded(loaded, registry, output=output, force=force,
                                   options=options, sweep=sweep), None
        except PrefkitError as exc:
            yield path, None, exc


def run_loaded(loaded: LoadedRecipe, registry, *, output=None, force: bool = False,
               options: RunOptions | None = None, sweep: SweepOptions | None = None):
    """A sweep recipe runs all its points (a SweepResult), any other recipe once (a RunResult)."""
    options = options or RunOptions()
    if is_sweep(loaded):
        from prefkit.sweeps.run import run_sweep_recipe

        return run_sweep_recipe(loaded, registry, output=output, force=force, quiet=options.quiet,
                                options=sweep or SweepOptions())
    return run_recipe(loaded, registry, output=output, force=force, options=options)




def _load_for(recipe, overrides, output) -> LoadedRecipe:
    loaded = load(recipe, overrides)
    if loaded.path == Path(MAPPING) and output is None and loaded.recipe.output is None:
        raise RecipeError("a recipe given as a mapping needs output:", where=MAPPING,
                          field="output", hint="add output: <folder> to it, or pass output=")
    return loaded


def load(recipe, overrides=()) -> LoadedRecipe:
    """A recipe file (path) or a mapping (its relative paths are read from the working folder)."""
    from collections.abc import Mapping

    from prefkit.recipe.loader import load_recipe, load_recipe_mapping

    if isinstance(recipe, LoadedRecipe):
        return recipe
    if isinstance(recipe, Mapping):
        return load_recipe_mapping(dict(recipe), tuple(overrides or ()))
    return load_recipe(recipe, tuple(overrides or ()))
