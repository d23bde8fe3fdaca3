"""Plugin discovery through the `prefkit` entry-point group, exactly as third parties use it."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prefkit import hookspecs
from prefkit.api import TensorMethod, WeightParams, hookimpl
from prefkit.cli import build_cli
from prefkit.errors import DuplicateMethodError, PluginError, RecipeError
from prefkit.registry import load_registry
from tests.conftest import builtin_plugins
from tests.helpers import load_tensors, write_recipe

PLUGIN_SOURCE = '''
from prefkit.api import TensorMethod, WeightParams, hookimpl


class FirstModelMethod(TensorMethod):
    name = "first_model"
    summary = "Takes the first model's tensor, times its weight."
    reference_url = "https://example.org"
    base = "input"
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        return tensors[0] * model_params[0].weight


@hookimpl
def prefkit_register_methods(register):
    register(FirstModelMethod())
'''


def install_distribution(root: Path, name: str, module: str, source: str, version="0.1") -> None:
    """An installed distribution on sys.path: a module plus dist-info with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[prefkit]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for mod in [m for m in sys.modules if m.startswith("prefkit_third")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


def test_hook_prefkit_register_methods_from_installed_distribution(site, workdir):
    install_distribution(site, "prefkit-third", "prefkit_third", PLUGIN_SOURCE)
    registry = load_registry()
    reg = registry.methods["first_model"]
    assert reg.plugin == "prefkit_third" and reg.distribution == "prefkit-third 0.1"
    assert {"linear", "task_arithmetic", "ties"} <= set(registry.methods)  # built-ins too

    cli = build_cli()  # the real, entry-point-based registry
    listed = CliRunner().invoke(cli, ["methods", "--json"])
    assert {"name": "first_model", "plugin": "prefkit_third"}.items() <= {
        k: v for r in json.loads(listed.stdout) if r["name"] == "first_model" for k, v in r.items()
    }.items()
    recipe = write_recipe(workdir, "merge_method: first_model\nmodels:\n  - model: zoo/imdb\n"
                          "    parameters: {weight: 2.0}\n  - model: zoo/mrpc\n"
                          "parameters: {weight: 1.0}\n")
    result = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(workdir / "out"), "-q"])
    assert result.exit_code == 0, result.stderr
    out, imdb = load_tensors(workdir / "out"), load_tensors(workdir / "zoo" / "imdb")
    assert all((out[n] == 2 * imdb[n]).all() for n in imdb)


def test_broken_plugin_does_not_break_the_others(site):
    install_distribution(site, "prefkit-third-broken", "prefkit_third_broken", "raise ImportError('nope')")
    registry = load_registry()
    assert "ties" in registry.methods
    assert registry.failed == {"prefkit_third_broken": "ImportError: nope"}
    with pytest.raises(RecipeError, match="plugins that failed to load: prefkit_third_broken"):
        registry.get("dare")


def test_disable_plugins_env(monkeypatch):
    monkeypatch.setenv("PREFKIT_DISABLE_PLUGINS", "ties")
    assert "ties" not in load_registry().methods
    monkeypatch.setenv("PREFKIT_LOAD_PLUGINS", "linear")
    assert set(load_registry().methods) == {"linear"}


class _Twin(TensorMethod):
    name = "ties"
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        return tensors[0]


class _TwinPlugin:
    @hookimpl
    def prefkit_register_methods(self, register):
        register(_Twin())


def test_duplicate_method_names_both_plugins():
    with pytest.raises(DuplicateMethodError,
                       match="method 'ties' is registered by both plugin 'ties' and plugin 'twin'"):
        load_registry(entry_points=False, plugins={**builtin_plugins(), "twin": _TwinPlugin()})


def test_duplicate_alias_is_an_error():
    class AliasTwin(_Twin):
        name = "my_avg"
        aliases = ("averaging",)

    class Plugin:
        @hookimpl
        def prefkit_register_methods(self, register):
            register(AliasTwin())

    with pytest.raises(DuplicateMethodError, match="'averaging' is registered by both plugin 'linear'"):
        load_registry(entry_points=False, plugins={**builtin_plugins(), "alias": Plugin()})


def test_misspelled_hook_fails_at_load():
    class Misspelled:
        @hookimpl
        def prefkit_register_method(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="prefkit_register_method"):
        load_registry(entry_points=False, plugins={"typo": Misspelled()})


def test_registering_a_non_method_is_a_plugin_error():
    class Bad:
        @hookimpl
        def prefkit_register_methods(self, register):
            register(object())

    with pytest.raises(PluginError, match="plugin 'bad' registered .* which has no 'name'"):
        load_registry(entry_points=False, plugins={"bad": Bad()})


def test_unknown_method_suggests_nearest(registry):
    with pytest.raises(RecipeError, match=r"unknown merge method 'tie'.*did you mean 'ties'"):
        registry.get("tie")
    assert registry.get("averaging").method.name == "linear"


def test_every_hookspec_is_documented_and_tested():
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("prefkit_")]
    assert specs
    tests = Path(__file__).read_text()
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Args:" in doc and "Returns:" in doc, f"{name} needs a full docstring"
        assert f"def test_hook_{name}" in tests, f"{name} needs a test_hook_{name} test"


def test_builtins_are_entry_points_of_the_prefkit_distribution():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="prefkit")}
    for name in ("linear", "task_arithmetic", "ties"):
        assert eps[name].value == f"prefkit.plugins.{name}"
        assert eps[name].dist.name == "prefkit"
    # built-ins import only prefkit's public API, never each other or the core internals
    allowed = {"prefkit.api", "prefkit.ops", "prefkit.errors"}
    for name in ("linear", "task_arithmetic", "ties"):
        source = inspect.getsource(importlib.import_module(f"prefkit.plugins.{name}"))
        imports = {line.split()[1] for line in source.splitlines()
                   if line.startswith("from prefkit")}
        assert imports <= allowed, (name, imports - allowed)


def test_hook_prefkit_register_tasks():
    from prefkit.api import Task

    class TaskPlugin:
        @hookimpl
        def prefkit_register_tasks(self, register):
            register(Task(name="my_task", dataset="csv", text_fields=("text",),
                          label_names=("a", "b"), data_files={"test": "x.csv"}))

    registry = load_registry(entry_points=False, plugins={**builtin_plugins(), "mine": TaskPlugin()})
    assert registry.task("my_task").plugin == "mine"
    assert registry.task("imdb").plugin == "reference_tasks"
    result = CliRunner().invoke(build_cli(lambda: registry), ["tasks", "--json"])
    assert {"name": "my_task", "plugin": "mine"}.items() <= next(
        r for r in json.loads(result.stdout) if r["name"] == "my_task").items()
    with pytest.raises(PluginError, match="task 'imdb' is registered by both plugin "
                       "'reference_tasks' and plugin 'twin'"):
        class Twin:
            @hookimpl
            def prefkit_register_tasks(self, register):
                register(Task(name="imdb", dataset="x", text_fields=("t",), label_names=("a",)))

        load_registry(entry_points=False, plugins={**builtin_plugins(), "twin": Twin()})
    with pytest.raises(RecipeError, match=r"unknown task 'imbd'.*did you mean 'imdb'"):
        registry.task("imbd")
