"""A study sweep over trainer and solver points (chebyshev with a train.steps budget grid,
adamerging) beside a merge, with seeds: every point trains or solves with its own seed, the
trained models and scores are cached by content, and a re-run resumes only what is missing."""

from __future__ import annotations

import json

import pytest
import yaml

from prefkit.recipe import load_recipe
from prefkit.sweeps import SweepOptions
from prefkit.sweeps.run import run_sweep
from prefkit.sweeps.store import latest, read_results
from tests.conftest import builtin_plugins

from .conftest import recipe_text


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def registry():
    from prefkit.registry import load_registry

    return load_registry(entry_points=False, plugins=builtin_plugins())


def study_recipe(tmp_path, setup) -> str:
    """The train tests' recipe (two tasks with train/validation/test CSVs), as a study."""
    text = yaml.safe_load(recipe_text(setup, "chebyshev"))
    for key in ("merge_method", "preference", "train"):
        text.pop(key)
    text["evaluate"] = {"split": "test", "num_samples": 40, "batch_size": 64, "max_length": 16,
                        "device": "cpu"}
    text["preferences"] = [[0.8, 0.2], [0.2, 0.8]]
    text["seeds"] = [0, 1]
    train = {"batch_size": 8, "lr": 0.01, "max_length": 16, "device": "cpu", "threads": 1}
    text["methods"] = [] if False else [
        {"merge_method": "task_arithmetic", "parameters": {"lambda": 0.5}},
        {"merge_method": "chebyshev", "train": {**train, "checkpoint_every": 50},
         "grid": {"train.steps": [2, 4]}},
        {"merge_method": "adamerging", "train": {**train, "steps": 2, "split": "validation",
                                                 "granularity": "task"}},
    ]
    text["output"] = str(tmp_path / "study")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return path


def test_study_of_trainer_and_solver_points_with_seeds_caches_and_resumes(tmp_path, tiny_setup,
                                                                          registry):
    path = study_recipe(tmp_path, tiny_setup)
    first = run_sweep(load_recipe(path), registry, options=SweepOptions(workers=0))
    # merge 2 prefs x 2 seeds; chebyshev 2 budgets x 2 prefs x 2 seeds; adamerging 2 x 2
    assert (first["points"], first["ran"], first["cached"], first["failed"]) == (16, 16, 0, 0)
    out = tmp_path / "study"
    records = list(latest(read_results(out / "results.jsonl")).values())
    rows = {(r["label"], r["family"], json.dumps(r["grid"])) for r in records}
    assert rows == {("task_arithmetic", "task_arithmetic", "null"),
                    ("chebyshev steps=2", "chebyshev", '{"train.steps": 2}'),
                    ("chebyshev steps=4", "chebyshev", '{"train.steps": 4}'),
                    ("adamerging", "adamerging", "null")}
    by_point = {r["point"]: r for r in records}
    assert len(by_point) == 16 and {r["seed"] for r in records} == {0, 1}
    for r in records:  # each point's recipe carries its own seed where the method draws
        recipe = yaml.safe_load((out / "points" / r["point"] / "recipe.yaml").read_text())
        assert recipe["evaluate"]["seed"] == r["seed"]
        if r["family"] != "task_arithmetic":
            assert recipe["train"]["seed"] == r["seed"]
        if r["family"] == "chebyshev":
            assert recipe["train"]["steps"] == r["grid"]["train.steps"]
    # the seed changes what is trained: four chebyshev-steps=4 models, not two
    trained = {json.loads((out / "points" / r["point"] / "model" / "prefkit.json").read_text())
               ["training"]["model"] for r in records if r["label"] == "chebyshev steps=4"}
    assert len(trained) == 4
    # ...and the test subset each seed scores (seed 0 and 1 draw different 40 of 60)
    scores = {(r["label"], tuple(r["preference"]), r["seed"]): r["results"] for r in records}
    ta = [scores[("task_arithmetic", (0.8, 0.2), s)]["topic"]["accuracy"] for s in (0, 1)]
    assert all(s["topic"]["n"] == 40 for s in scores.values())

    again = run_sweep(load_recipe(path), registry, options=SweepOptions(workers=0))
    assert (again["ran"], again["cached"]) == (0, 16)

    # resume: a trainer point and a solver point lost their result, not their model
    lost = [r for r in records if r["family"] in ("chebyshev", "adamerging")
            and r["seed"] == 1 and r["preference"] == [0.2, 0.8]][:2]
    for r in lost:
        (out / "points" / r["point"] / "result.json").unlink()
    resumed = run_sweep(load_recipe(path), registry, options=SweepOptions(workers=0))
    assert (resumed["ran"], resumed["cached"]) == (2, 14)
    now = latest(read_results(out / "results.jsonl"))
    for r in lost:  # re-scored from the stored model: nothing trained or solved again
        assert now[r["point"]]["merged"] is False
        assert now[r["point"]]["results"] == r["results"]
    assert ta[0] != ta[1] or scores[("task_arithmetic", (0.8, 0.2), 0)] != \
        scores[("task_arithmetic", (0.8, 0.2), 1)]
