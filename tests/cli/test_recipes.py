"""The shipped recipes stay valid, and the README's plugin example works as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.registry import load_registry
from tests.conftest import builtin_plugins

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_recipes_validate(recipe):
    cli = build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 0, result.stderr


def test_offline_demo_recipes_merge(tmp_path, monkeypatch):
    from prefkit.testing import REFERENCE_TASKS, make_zoo

    folder = tmp_path / "offline"
    folder.mkdir()
    for recipe in (ROOT / "recipes" / "offline").glob("*.yaml"):
        (folder / recipe.name).write_text(recipe.read_text())
    make_zoo(folder / "zoo", tasks=REFERENCE_TASKS)
    monkeypatch.chdir(tmp_path)
    cli = build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))
    result = CliRunner().invoke(cli, ["run", *sorted(str(p) for p in folder.glob("*.yaml")), "-q"])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert (tmp_path / "runs" / "offline_ties_pref" / "model.safetensors").exists()


def test_readme_plugin_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    source = re.search(r"```python\n(# prefkit_scaled_avg.py\n.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(source, "prefkit_scaled_avg.py", "exec"), namespace)
    plugin = type("Plugin", (), {"prefkit_register_methods": staticmethod(
        namespace["prefkit_register_methods"])})()
    registry = load_registry(entry_points=False, plugins={**builtin_plugins(), "scaled": plugin})
    method = registry.get("scaled_average").method
    import torch

    from prefkit.api import MergeInfo, TensorInfo, WeightParams

    out = method.merge([torch.ones(2), 3 * torch.ones(2)], base=None,
                       params=method.Params(scale=2.0),
                       model_params=[WeightParams(weight=1), WeightParams(weight=1)],
                       info=MergeInfo(TensorInfo("w", None, 0.0, ())))
    assert out.tolist() == [4.0, 4.0]
