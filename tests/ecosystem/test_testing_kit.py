"""prefkit.testing as plugin authors get it: the fixtures arrive through the pytest11 entry point
(these tests do not import them), and the old names still import from prefkit.testing."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import torch

from prefkit.api import TensorMethod, WeightParams, hookimpl

RECIPE = """merge_method: {method}
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: {wa}}}
  - model: {b}
    parameters: {{weight: {wb}}}
"""


class _Halves(TensorMethod):
    name = "halves"
    summary = "Base plus half of each weighted task vector."
    reference_url = "https://example.org"
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        return base + sum(0.5 * p.weight * (t - base) for p, t in zip(model_params, tensors))


class _Plugin:
    @hookimpl
    def prefkit_register_methods(self, register):
        register(_Halves())


def test_the_pytest11_entry_point_names_the_fixture_module():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert eps["prefkit"] == "prefkit.testing.pytest_plugin"


def test_fixtures_merge_a_plugin_method(prefkit_zoo, prefkit_registry, prefkit_merge, prefkit_cli):
    assert set(prefkit_zoo) == {"base", "ag_news", "imdb", "mnli", "mrpc"}
    registry = prefkit_registry(_Plugin())
    assert registry.methods["halves"].plugin == "_Plugin"
    assert "ties" in registry.methods  # with the built-ins
    def recipe(method, wa=1.0, wb=0.5):
        return RECIPE.format(method=method, base=prefkit_zoo["base"], a=prefkit_zoo["imdb"],
                             b=prefkit_zoo["mrpc"], wa=wa, wb=wb)

    halves = prefkit_merge(recipe("halves"), registry)
    full = prefkit_merge(recipe("task_arithmetic"), registry)
    base = prefkit_merge(recipe("task_arithmetic", 0.0, 0.0), registry)
    name = "roberta.encoder.layer.1.output.dense.weight"
    torch.testing.assert_close(halves[name] - base[name], 0.5 * (full[name] - base[name]),
                               rtol=0, atol=1e-6)
    result = prefkit_cli(["methods", "--json"], registry=registry)
    assert result.exit_code == 0
    assert {"name": "halves", "plugin": "_Plugin"}.items() <= next(
        r for r in json.loads(result.stdout) if r["name"] == "halves").items()


def test_loading_the_fixtures_does_not_import_torch():
    code = ("import sys, prefkit.testing.pytest_plugin, prefkit.testing; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_checkpoint_factories_still_import_from_prefkit_testing():
    from prefkit.testing import REFERENCE_TASKS, make_base, make_finetuned, make_zoo, tiny_config

    assert REFERENCE_TASKS["ag_news"] == 4 and tiny_config(2)["id2label"]["1"] == "LABEL_1"
    assert all(callable(f) for f in (make_base, make_finetuned, make_zoo))


def test_a_broken_builtin_is_listed_and_the_rest_load(monkeypatch):
    from importlib.metadata import EntryPoint

    from prefkit.testing import pytest_plugin

    class Dist:
        entry_points = [EntryPoint("linear", "prefkit.plugins.linear", "prefkit"),
                        EntryPoint("gone", "prefkit.plugins.no_such_module", "prefkit"),
                        EntryPoint("prefkit", "prefkit.testing.pytest_plugin", "pytest11")]

    monkeypatch.setattr(pytest_plugin.importlib.metadata, "distribution", lambda name: Dist())
    registry = pytest_plugin.make_registry(_Plugin())
    assert set(registry.methods) == {"linear", "halves"}
    assert registry.failed == {"gone": "ModuleNotFoundError: No module named "
                                       "'prefkit.plugins.no_such_module'"}
