"""The demo pipeline end to end at a tiny size: zoo → merge with evaluate: → comparison report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prefkit.api import hookimpl
from prefkit.cli import build_cli
from prefkit.demo import report
from prefkit.registry import load_registry
from tests.conftest import builtin_plugins

pytest.importorskip("transformers")
from tests.demo.test_demo_zoo import PAIRS, SENTIMENT, _one_thread, base_model, built  # noqa: E402,F401


class _TinyTasks:
    @hookimpl
    def prefkit_register_tasks(self, register):
        register(SENTIMENT)
        register(PAIRS)


RECIPE = """\
merge_method: {method}
base_model: zoo/base
models:
  - {{model: zoo/sentiment, task: sentiment}}
  - {{model: zoo/pairs, task: pairs}}
parameters: {params}
preference: [0.7, 0.3]
heads: per_task
evaluate: {{split: test, batch_size: 4, max_length: 12}}
output: runs/{name}
"""


def test_zoo_merge_evaluate_report(built, tmp_path, monkeypatch):  # noqa: F811 (fixture)
    (tmp_path / "zoo").symlink_to(built["base"].parent)
    monkeypatch.chdir(tmp_path)
    registry = load_registry(entry_points=False, plugins={**builtin_plugins(), "tiny": _TinyTasks()})
    recipes = []
    for name, method, params in (("base", "task_arithmetic", "{lambda: 0.0}"),
                                 ("ties", "ties", "{density: 0.5}")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(RECIPE.format(method=method, params=params, name=name))
        recipes.append(str(path))
    result = CliRunner().invoke(build_cli(lambda: registry), ["run", *recipes, "-q"])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [sorted(x["results"]) for x in lines] == [["pairs", "sentiment"]] * 2
    assert lines[0]["results"]["sentiment"]["n"] == 12
    text = report.table(tmp_path / "zoo", [tmp_path / "runs" / "base", tmp_path / "runs" / "ties"],
                        registry)
    header, *rows = text.splitlines()[1:]
    assert header.split() == ["task", "majority", "fine-tuned", "base", "ties"]
    assert [r.split()[0] for r in rows] == ["sentiment", "pairs", "mean"]
    # the fine-tuned models were scored with the runs' settings and cached in their folders
    cached = json.loads((built["sentiment"] / "results.json").read_text())
    assert cached["settings"]["split"] == "test" and cached["tasks"]["sentiment"]["n"] == 12
