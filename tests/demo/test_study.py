"""The study recipe (recipes/demo/study.yaml) end to end at a tiny size, on the demo's real zoo
and data: every family's points train, solve or merge, are scored per seed, and the report puts
the four families on one front with confidence intervals and costs. CI runs it after `make demo`
(the Makefile's test-slow target makes sure the zoo is there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prefkit.recipe import load_recipe
from prefkit.sweeps import SweepOptions
from prefkit.sweeps.run import run_sweep
from prefkit.sweeps.store import latest, read_results
from tests.conftest import builtin_plugins

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "recipes" / "demo" / "zoo"


def tiny_study(folder: Path) -> Path:
    """study.yaml as shipped, with fewer preferences, seeds, steps and test examples."""
    data = yaml.safe_load((ROOT / "recipes" / "demo" / "study.yaml").read_text())
    data["preferences"] = [[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]
    data["seeds"] = [0, 1]
    data["evaluate"]["num_samples"] = 40
    methods = {m["merge_method"]: m for m in data["methods"]}
    methods["chebyshev"]["grid"] = {"train.steps": [1, 2]}
    methods["epo"]["train"]["steps"] = 2
    methods["adamerging"]["train"].update(steps=2, num_samples=16)
    data["output"] = str(folder / "study")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_tiny_study_on_the_demo_zoo(tmp_path, monkeypatch):
    assert (ZOO / "base").is_dir(), f"{ZOO} is missing: run `make demo` (or make test-slow) first"
    from prefkit.registry import load_registry

    (tmp_path / "zoo").symlink_to(ZOO)
    monkeypatch.chdir(tmp_path)  # checkpoints/training/ lands here
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    registry = load_registry(entry_points=False, plugins=builtin_plugins())
    line = run_sweep(load_recipe(tiny_study(tmp_path)), registry, options=SweepOptions(workers=0))
    # 6 rows (TA, TIES, chebyshev at 2 budgets, EPO, AdaMerging) x 2 preferences x 2 seeds
    assert (line["points"], line["ran"], line["failed"]) == (24, 24, 0)
    out = tmp_path / "study"
    records = list(latest(read_results(out / "results.jsonl")).values())
    assert {r["family"] for r in records} == {"task_arithmetic", "ties", "chebyshev", "epo",
                                              "adamerging"}
    for r in records:
        assert set(r["results"]) == {"tweet_sentiment", "wordnet_topic", "wordnet_relation"}
        assert all(t["n"] == 40 for t in r["results"].values())
        assert r["cost"]["wall_s"] > 0 and r["cost"]["eval_examples"] == 120
    trained = [r for r in records if r["family"] in ("chebyshev", "epo", "adamerging")]
    assert all(r["cost"]["train_s"] > 0 for r in trained)
    report = (out / "report.md").read_text()
    for family in ("task_arithmetic", "ties", "chebyshev steps=1", "chebyshev steps=2", "epo",
                   "adamerging"):
        assert family in report
    assert "95%" in report and "What this shows" in report
    assert json.loads(json.dumps(line))["report"] == str(out / "report.md")
