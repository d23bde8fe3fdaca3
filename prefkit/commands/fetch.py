"""`prefkit fetch RECIPE...`: download every model, adapter and dataset the recipes need into the
local caches ahead of time (for clusters whose compute nodes have no internet). With `--offline`
it only checks that the caches hold them. One JSON line per item on stdout:

    {"recipe": "r.yaml", "kind": "model", "ref": "org/name@v1", "status": "fetched", "path": "..."}

`status` is `fetched` (in the cache now), `cached` (offline: found in the cache), `local` (a folder,
or data files on disk), `packaged` (task data shipped by a Python package) or `failed`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from prefkit.errors import ExitCode, PrefkitError

LOCAL_BUILDERS = {"csv", "json", "parquet", "text", "arrow", "imagefolder", "audiofolder"}


@dataclass(frozen=True)
class Need:
    """One thing a recipe needs: a model or adapter reference, or a task's dataset."""

    kind: str  # "model" | "adapter" | "dataset"
    ref: str
    loc: tuple  # where the recipe names it (for error locations)
    task: Any = None  # prefkit.api.Task for datasets


def recipe_needs(loaded, registry, *, datasets: bool = True) -> list[Need]:
    """Models (base, models, adapters, tokenizer source) and datasets (of the tasks the recipe
    names), each once, in recipe order."""
    from prefkit.eval.run import inline_tasks
    from prefkit.io.lora import split_reference

    recipe, folder = loaded.recipe, loaded.path.parent
    needs: list[Need] = []

    def add(need: Need) -> None:
        if all((n.kind, n.ref) != (need.kind, need.ref) for n in needs):
            needs.append(need)

    def add_model(ref: str, loc: tuple, lora: str | None = None) -> None:
        model, adapter = split_reference(ref, folder)
        add(Need("model", model, loc))
        for name in (adapter, lora):
            if name:
                add(Need("adapter", name, loc[:-1] + ("lora",) if lora == name else loc))

    if recipe.base_model:
        add_model(recipe.base_model, ("base_model",))
    for i, model in enumerate(recipe.models):
        add_model(model.model, ("models", i, "model"), model.lora)
    labels = {m.model for m in recipe.models}
    if recipe.tokenizer_source not in (None, "base", *labels):
        add_model(recipe.tokenizer_source, ("tokenizer_source",))
    if datasets:
        inline = inline_tasks(recipe.tasks)
        named = [(m.task, ("models", i, "task")) for i, m in enumerate(recipe.models) if m.task]
        if recipe.evaluate is not None:
            named += [(t, ("evaluate", "tasks", i)) for i, t in enumerate(recipe.evaluate.tasks or [])]
        for name, loc in named:
            task = inline.get(name) or registry.task(name).task
            add(Need("dataset", task.dataset if task.loader is None else name, loc, task))
    return needs


def fetch_one(need: Need, folder, *, allow_pickle: bool) -> dict[str, Any]:
    """Bring one need into the caches; returns {status, path?}. Raises PrefkitError."""
    from prefkit.io.checkpoint import Checkpoint
    from prefkit.io.hub import is_offline, resolve_local, resolve_model

    done = "cached" if is_offline() else "fetched"
    if need.kind == "dataset":
        return _fetch_dataset(need.task, done)
    local = resolve_local(need.ref, folder)
    path = resolve_model(need.ref, folder, allow_pickle, kind=need.kind)
    if need.kind == "model":  # headers and index must be complete, not just present
        Checkpoint.open(path, allow_pickle=allow_pickle)
    else:
        from prefkit.io.lora import read_adapter

        read_adapter(path, allow_pickle=allow_pickle)
    return {"status": "local" if local is not None else done, "path": str(path)}


def _fetch_dataset(task, done: str) -> dict[str, Any]:
    from prefkit.eval.data import load_split

    if task.loader is not None:
        return {"status": "packaged"}
    if task.dataset in LOCAL_BUILDERS:
        return {"status": "local"}
    for role in sorted(task.splits):  # every split the task declares: evaluation and training
        load_split(task, role)
    return {"status": done}


def fetch_recipes(recipes: tuple[str, ...], registry, *, overrides: tuple[str, ...] = (),
                  datasets: bool = True, allow_pickle: bool = False,
                  report: Callable[[PrefkitError], None]) -> int:
    """Fetch what every recipe needs, one JSON line per item; a failure does not stop the rest.
    Returns the worst exit code."""
    from prefkit.recipe import load_recipe

    worst = ExitCode.OK
    for path in recipes:
        try:
            loaded = load_recipe(path, overrides)
            needs = recipe_needs(loaded, registry, datasets=datasets)
        except PrefkitError as exc:
            report(exc)
            worst = max(worst, exc.exit_code)
            continue
        for need in needs:
            line = {"recipe": path, "kind": need.kind, "ref": need.ref}
            try:
                line.update(fetch_one(need, loaded.path.parent, allow_pickle=allow_pickle))
            except PrefkitError as exc:
                located = loaded.error(need.loc, exc.message, exc.hint)  # keeps its exit code
                report(located)
                worst = max(worst, exc.exit_code)
                line.update(status="failed", error=exc.message)
            click.echo(json.dumps(line))
    return int(worst)
