"""Sweep expansion: preference grids, point recipes (ordinary recipes), checks located in the
sweep file, cache keys."""

from __future__ import annotations

import math
import os
import re

import pytest
import yaml
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.errors import RecipeError, RecipeErrors
from prefkit.recipe import load_recipe
from prefkit.sweeps import is_sweep
from prefkit.sweeps.grid import simplex_grid
from prefkit.sweeps.points import (
    check_sweep,
    eval_key,
    expand,
    input_fingerprints,
    labels,
    model_key,
    standalone,
)
from tests.sweep.conftest import write_sweep


def test_simplex_grid_values_and_count():
    assert simplex_grid(2, 4) == [[1, 0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0, 1]]
    grid = simplex_grid(3, 4)
    assert len(grid) == math.comb(4 + 2, 2) == 15
    assert grid[:3] == [[1, 0, 0], [0.75, 0.25, 0], [0.75, 0, 0.25]]
    assert all(math.isclose(sum(p), 1.0) and min(p) >= 0 for p in grid)
    assert len({tuple(p) for p in grid}) == 15
    assert simplex_grid(1, 3) == [[1.0]]
    with pytest.raises(ValueError):
        simplex_grid(0, 3)


def test_expansion_gives_ordinary_point_recipes(tmp_path, tiny_zoo):
    path = write_sweep(tmp_path, tiny_zoo)
    sweep = load_recipe(path)
    assert is_sweep(sweep)
    points = expand(sweep)
    assert [(p.label, p.preference) for p in points] == [
        (m, pref) for m in ("linear", "task_arithmetic", "ties")
        for pref in ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0])]
    ta = points[4]
    assert ta.recipe["merge_method"] == "task_arithmetic"
    assert ta.recipe["parameters"] == {"lambda": 0.8}
    assert ta.recipe["preference"] == [0.5, 0.5]
    assert not set(ta.recipe) & {"preferences", "methods", "keep_models", "wandb", "logging", "output"}
    assert ta.recipe["models"] == sweep.data["models"] and ta.recipe["evaluate"] == sweep.data["evaluate"]
    # written on its own, a point is a recipe the loader accepts unchanged
    own = tmp_path / "point.yaml"
    own.write_text(yaml.safe_dump(standalone(ta, sweep, tmp_path / "model")))
    loaded = load_recipe(own)
    assert not is_sweep(loaded)
    assert loaded.recipe.merge_method == "task_arithmetic" and loaded.recipe.preference == [0.5, 0.5]
    assert loaded.recipe.output == str(tmp_path / "model")


def test_explicit_preferences_and_a_single_method(tmp_path, tiny_zoo):
    path = write_sweep(tmp_path, tiny_zoo, preferences="[[3, 1], [1, 1]]",
                       methods="  - {merge_method: ties, parameters: {density: 0.3}}\n")
    points = expand(load_recipe(path))
    assert [(p.label, p.preference, p.recipe["parameters"]) for p in points] == [
        ("ties", [3.0, 1.0], {"density": 0.3}), ("ties", [1.0, 1.0], {"density": 0.3})]


def test_trainer_settings_pass_through_to_their_points(tmp_path, tiny_zoo):
    methods = ("  - {merge_method: epo, train: {steps: 3, lr: 0.001}}\n"
               "  - {merge_method: linear}\n")
    points = expand(load_recipe(write_sweep(tmp_path, tiny_zoo, preferences="[[1, 1]]",
                                            methods=methods)))
    assert points[0].recipe["train"] == {"steps": 3, "lr": 0.001}
    assert points[0].recipe["merge_method"] == "epo" and "train" not in points[1].recipe


def test_validate_checks_a_sweep(tmp_path, tiny_zoo, sweep_registry):
    path = write_sweep(tmp_path, tiny_zoo)
    result = CliRunner().invoke(build_cli(lambda: sweep_registry), ["validate", str(path)])
    assert result.exit_code == 0 and result.stdout == f"{path}: ok\n"


def test_labels_of_a_method_listed_twice(tmp_path, tiny_zoo):
    methods = ("  - {merge_method: ties, parameters: {density: 0.2}}\n"
               "  - {merge_method: ties, parameters: {density: 0.8}}\n"
               "  - {merge_method: linear, name: avg}\n")
    assert labels(load_recipe(write_sweep(tmp_path, tiny_zoo, methods=methods))) == [
        "ties(density=0.2)", "ties(density=0.8)", "avg"]


def test_sweep_without_methods_uses_the_top_level_method(tmp_path, tiny_zoo):
    path = write_sweep(tmp_path, tiny_zoo, preferences="[[1, 0], [0, 1]]", methods="")
    text = path.read_text().replace("methods:\n", "merge_method: task_arithmetic\n"
                                                  "parameters: {lambda: 0.5}\n")
    path.write_text(text)
    points = expand(load_recipe(path))
    assert [(p.label, p.recipe["parameters"], p.preference) for p in points] == [
        ("task_arithmetic", {"lambda": 0.5}, [1.0, 0.0]),
        ("task_arithmetic", {"lambda": 0.5}, [0.0, 1.0])]


def _errors(path, registry) -> list[str]:
    try:
        check_sweep(load_recipe(path), registry)
    except RecipeErrors as exc:
        return [str(e) for e in exc.errors]
    except RecipeError as exc:
        return [str(exc)]
    return []


def test_point_errors_point_into_the_sweep_file(tmp_path, tiny_zoo, sweep_registry):
    methods = ("  - {merge_method: linear}\n"
               "  - {merge_method: ties, parameters: {densty: 0.5}}\n"
               "  - {merge_method: tiez}\n")
    path = write_sweep(tmp_path, tiny_zoo, preferences="[[1, 0], [1, 1, 1]]", methods=methods)
    errors = _errors(path, sweep_registry)
    # each problem once, although every point of the method repeats it
    assert len(errors) == len(set(errors)) == 3, errors
    assert errors[0].startswith(f"{path}:12:23: preference: has 3 entries for 2 models")
    assert errors[1].startswith(f"{path}:15:39: parameters.densty: unknown parameter for method 'ties'")
    assert errors[2].startswith(f"{path}:16:6: merge_method: unknown merge method 'tiez'")


def test_sweep_rules(tmp_path, tiny_zoo, sweep_registry):
    path = write_sweep(tmp_path, tiny_zoo, extra="preference: [1, 1]\nparameters: {lambda: 1}\n")
    text = path.read_text().replace("evaluate: {batch_size: 8, max_length: 16}\n", "")
    path.write_text(text.replace(", task: toy_b}", "}"))
    errors = _errors(path, sweep_registry)
    assert any("parameters: parameters and methods: both given" in e for e in errors), errors
    assert any("preference: preference and preferences both given" in e for e in errors)
    assert any("a sweep scores every point: add evaluate:" in e for e in errors)
    assert any("models[1]: a sweep needs task: for every model" in e for e in errors)


def test_bad_preferences_are_schema_errors(tmp_path, tiny_zoo):
    for value, message in (("{grid: simplex, steps: 0}",
                            "preferences.steps: 0 is less than 1; must be a whole number from 1 to 100"),
                           ("{grid: cube, steps: 2}",
                            "preferences.grid: 'cube' is not a choice; use one of: simplex"),
                           ("[[1, -1]]", "preferences: [0][1]: -1.0 is negative; each entry must "
                            "be a finite number from 0 to 1e6 (use 0 to ignore a task)"),
                           ("[[1, 1], [0, 0]]", "preferences: [1] = [0.0, 0.0]: every entry is 0"),
                           ("[]", "preferences: preferences is empty")):
        path = write_sweep(tmp_path, tiny_zoo, preferences=value)
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(path)


def test_plain_recipes_keep_their_rules(workdir):
    cli = build_cli(lambda: None)
    path = workdir / "r.yaml"
    path.write_text("models: [{model: zoo/imdb}]\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 3
    assert f"{path}:1:1: merge_method: required key is missing (add merge_method: <name>" in result.stderr
    path.write_text("merge_method: linear\nmodels: [{model: zoo/imdb}]\nkeep_models: false\n")
    result = CliRunner().invoke(build_cli(), ["validate", str(path)])
    assert result.exit_code == 3 and "keep_models: keep_models applies to sweeps only" in result.stderr
    path.write_text("merge_method: linear\nmodels: [{model: zoo/imdb}]\n")
    result = CliRunner().invoke(build_cli(), ["run", str(path), "--evaluate-only", "-q"])
    assert result.exit_code == 3 and "--evaluate-only apply to sweeps only" in result.stderr


def test_plan_refuses_a_sweep(tmp_path, tiny_zoo):
    path = write_sweep(tmp_path, tiny_zoo)
    result = CliRunner().invoke(build_cli(), ["plan", str(path)])
    assert result.exit_code == 3 and "plan takes one merge, and this recipe is a sweep" in result.stderr
    assert "Traceback" not in result.stderr


def test_cache_keys_follow_recipe_and_inputs(tmp_path, tiny_zoo):
    sweep = load_recipe(write_sweep(tmp_path, tiny_zoo))
    points = expand(sweep)
    prints = input_fingerprints(sweep)
    keys = [model_key(p, prints) for p in points]
    assert len(set(keys)) == len(points)  # every point its own model
    assert keys == [model_key(p, input_fingerprints(sweep)) for p in points]  # stable
    # evaluate: settings change the score's key, not the model's
    other_path = write_sweep(tmp_path / "b", tiny_zoo)
    other_path.write_text(other_path.read_text().replace("batch_size: 8", "batch_size: 4"))
    other = load_recipe(other_path)
    other_points = expand(other)
    assert [model_key(p, prints) for p in other_points] == keys
    assert eval_key(keys[0], other_points[0]) != eval_key(keys[0], points[0])
    # a retrained input (same shapes, new file) changes every key that reads it
    weights = tiny_zoo / "tb" / "model.safetensors"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert [model_key(p, input_fingerprints(sweep)) for p in points] != keys
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
