"""pytest fixtures for plugin authors, loaded automatically wherever prefkit is installed
(`[project.entry-points.pytest11] prefkit = "prefkit.testing.pytest_plugin"`).

- `prefkit_zoo`: a tiny seeded checkpoint set, made once per session: ``{"base": Path, "ag_news":
  Path, "imdb": Path, "mnli": Path, "mrpc": Path}`` (RoBERTa-shaped, 2 shards each, heads of
  4/2/3/2 labels, a base without head).
- `prefkit_registry(*plugins, builtins=True)`: a registry of the given plugin modules or objects
  (plus prefkit's built-ins), independent of what else is installed.
- `prefkit_merge(recipe_text, registry=None)`: writes the recipe in a temporary folder, merges it
  and returns the output tensors by name.
- `prefkit_cli(args, registry=None)`: runs the `prefkit` command line in-process (click's
  CliRunner) and returns its result (`exit_code`, `stdout`, `stderr`).

Everything heavy (torch, the checkpoint factories) is imported inside the fixtures, so loading
this module costs nothing in test runs that do not use them.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest


def make_registry(*plugins: Any, builtins: bool = True):
    """A registry of `plugins` (modules or objects; named by module or class) and prefkit's
    built-ins (its distribution's own entry points). A built-in that fails to import is listed in
    `registry.failed`, as `prefkit plugins` would show it, and the rest still load."""
    from prefkit.registry import load_registry

    named: dict[str, Any] = {}
    failed: dict[str, str] = {}
    eps = importlib.metadata.distribution("prefkit").entry_points if builtins else []
    for ep in (ep for ep in eps if ep.group == "prefkit"):
        try:
            named[ep.name] = ep.load()
        except Exception as exc:
            failed[ep.name] = f"{type(exc).__name__}: {exc}"
    for plugin in plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        named[name.rsplit(".", 1)[-1]] = plugin
    registry = load_registry(entry_points=False, plugins=named)
    registry.failed.update(failed)
    return registry


@pytest.fixture(scope="session")
def prefkit_zoo(tmp_path_factory) -> dict[str, Path]:
    from prefkit.testing.checkpoints import make_zoo

    return make_zoo(tmp_path_factory.mktemp("prefkit_zoo"))


@pytest.fixture
def prefkit_registry():
    return make_registry


@pytest.fixture
def prefkit_merge(tmp_path):
    from prefkit.engine.executor import execute
    from prefkit.recipe import load_recipe
    from prefkit.recipe.resolve import resolve

    def merge(recipe_text: str, registry=None) -> dict[str, Any]:
        from safetensors.torch import load_file

        folder = tmp_path / f"merge{len(list(tmp_path.glob('merge*')))}"
        folder.mkdir()
        recipe = folder / "recipe.yaml"
        recipe.write_text(recipe_text)
        plan = resolve(load_recipe(recipe), registry or make_registry(), folder / "out")
        execute(plan)
        tensors: dict[str, Any] = {}
        for file in sorted((folder / "out").glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        return tensors

    return merge


@pytest.fixture
def prefkit_cli():
    from click.testing import CliRunner

    from prefkit.cli import build_cli

    def invoke(args: list[str], registry=None):
        reg = registry or make_registry()
        return CliRunner().invoke(build_cli(lambda: reg), [str(a) for a in args])

    return invoke
