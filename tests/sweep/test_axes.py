"""The study axes of a sweep: `seeds:` (one point per seed, the seed written where the method
draws random numbers) and a method's `grid:` (one row per combination of settings), with their
errors located in the sweep file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.recipe import load_recipe
from prefkit.sweeps import is_sweep
from prefkit.sweeps.points import check_sweep, expand, folder_name, input_fingerprints, model_key
from tests.conftest import builtin_plugins
from tests.sweep.conftest import write_sweep

GRID = ("  - {merge_method: task_arithmetic, grid: {parameters.lambda: [0.4, 0.8]}}\n"
        "  - {merge_method: ties, parameters: {int8_mask: false},\n"
        "     grid: {parameters.lambda: [1.0, 0.5], parameters.density: [0.2, 0.4]}}\n")


def _cli(*args):
    from prefkit.registry import load_registry

    cli = build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_seeds_make_one_point_per_seed_with_the_seed_where_it_is_drawn(tmp_path, tiny_zoo,
                                                                       sweep_registry):
    path = write_sweep(tmp_path, tiny_zoo, preferences="[[0.7, 0.3]]", extra="seeds: [3, 0, 7]\n")
    sweep = load_recipe(path)
    points = check_sweep(sweep, sweep_registry)
    assert [(p.label, p.seed) for p in points] == [
        (m, s) for m in ("linear", "task_arithmetic", "ties") for s in (3, 0, 7)]
    for p in points:  # a merge draws no random numbers: only the test subset is seeded
        assert p.recipe["evaluate"] == {"batch_size": 8, "max_length": 16, "seed": p.seed}
        assert "train" not in p.recipe and "random_seed" not in (p.recipe.get("parameters") or {})
        assert p.family == p.label and p.grid is None
    prints = input_fingerprints(sweep)
    keys = [model_key(p, prints) for p in points]
    assert len(set(keys)) == 3  # one merge per method, whatever the seed...
    assert len({folder_name(p, k) for p, k in zip(points, keys)}) == 9  # ...but a record per seed
    assert folder_name(points[1], keys[1]).endswith("_s0")


def test_seeds_reach_train_seed_of_trainers_and_random_seed_of_random_merges(tmp_path, tiny_zoo):
    from types import SimpleNamespace

    from prefkit.api import Params

    class Random(Params):
        random_seed: int = 0

    kinds = {"chebyshev": SimpleNamespace(kind="trainer", Params=Params),
             "adamerging": SimpleNamespace(kind="solver", Params=Params),
             "linear": SimpleNamespace(kind="tensor", Params=Random)}
    registry = SimpleNamespace(get=lambda name: SimpleNamespace(method=kinds[name]))
    methods = ("  - {merge_method: chebyshev, train: {steps: 3}}\n"
               "  - {merge_method: adamerging}\n  - {merge_method: linear}\n")
    sweep = load_recipe(write_sweep(tmp_path, tiny_zoo, preferences="[[0.5, 0.5]]",
                                    methods=methods, extra="seeds: [5]\n"))
    cheb, ada, lin = expand(sweep, registry)
    assert cheb.recipe["train"] == {"steps": 3, "seed": 5} and ada.recipe["train"] == {"seed": 5}
    assert lin.recipe["parameters"] == {"random_seed": 5} and "train" not in lin.recipe
    assert all(p.recipe["evaluate"]["seed"] == 5 for p in (cheb, ada, lin))
    # the sweep's own method entry is left as written
    assert sweep.data["methods"][0]["train"] == {"steps": 3}


def test_grid_makes_a_row_per_combination(tmp_path, tiny_zoo, sweep_registry):
    path = write_sweep(tmp_path, tiny_zoo, preferences="[[1, 0], [0, 1]]", methods=GRID)
    sweep = load_recipe(path)
    points = check_sweep(sweep, sweep_registry)
    rows = list(dict.fromkeys((p.label, p.family) for p in points))
    assert rows == [("task_arithmetic lambda=0.4", "task_arithmetic"),
                    ("task_arithmetic lambda=0.8", "task_arithmetic"),
                    ("ties lambda=1.0 density=0.2", "ties"), ("ties lambda=1.0 density=0.4", "ties"),
                    ("ties lambda=0.5 density=0.2", "ties"), ("ties lambda=0.5 density=0.4", "ties")]
    assert len(points) == 12 and all(p.seed is None for p in points)
    third = [p for p in points if p.label == "ties lambda=0.5 density=0.2"]
    assert [p.recipe["parameters"] for p in third] == [
        {"int8_mask": False, "lambda": 0.5, "density": 0.2}] * 2
    assert third[0].grid == {"parameters.lambda": 0.5, "parameters.density": 0.2}
    assert "grid" not in third[0].recipe
    assert sweep.data["methods"][1]["parameters"] == {"int8_mask": False}  # as written


def test_a_bad_grid_value_is_located_at_its_entry(tmp_path, tiny_zoo):
    methods = ("  - {merge_method: ties, parameters: {density: 0.5},\n"
               "     grid: {parameters.lambda: [1.0, -5.0e30]}}\n")
    path = write_sweep(tmp_path, tiny_zoo, methods=methods)
    result = _cli("validate", path)
    assert result.exit_code == 3, result.stderr
    (line,) = result.stderr.splitlines()
    row = path.read_text().splitlines().index("     grid: {parameters.lambda: [1.0, -5.0e30]}}")
    column = path.read_text().splitlines()[row].index("-5.0e30") + 1
    assert line == (f"Error: {path}:{row + 1}:{column}: parameters.lambda: -5e+30 is out of range; "
                    "allowed: a finite number from -1e6 to 1e6"), line


@pytest.mark.parametrize("methods, extra, message", [
    ("  - {merge_method: ties, grid: {density: [0.2]}}\n", "",
     "grid key 'density' is not parameters.<name> or train.<name>"),
    ("  - {merge_method: ties, grid: {parameters.density: []}}\n", "",
     "grid parameters.density: the list of values is empty"),
    ("  - {merge_method: ties, grid: {parameters.density: [0.2, 0.2]}}\n", "",
     "grid parameters.density: 0.2 is listed twice"),
    ("  - {merge_method: ties, parameters: {density: 0.5}, grid: {parameters.density: [0.2]}}\n",
     "", "parameters.density is given here and in grid:"),
    ("  - {merge_method: chebyshev, train: {seed: 1}}\n", "seeds: [0]\n",
     "train.seed and seeds: both given"),
    ("  - {merge_method: linear}\n", "seeds: []\n", "seeds must be a non-empty list"),
    ("  - {merge_method: linear}\n", "seeds: [0, 0]\n", "seeds [0, 0]: a seed is listed twice"),
    ("  - {merge_method: linear}\n", "seeds: [1.5]\n", "seeds[0] = 1.5: each seed must be an integer"),
    ("  - {merge_method: linear}\n", "seeds: [true]\n", "seeds[0] = True: each seed must be"),
])
def test_axis_errors_are_one_located_line(tmp_path, tiny_zoo, methods, extra, message):
    path = write_sweep(tmp_path, tiny_zoo, methods=methods, extra=extra)
    result = _cli("validate", path)
    assert result.exit_code == 3, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"Error: {path}:"), result.stderr


def test_seeds_alone_make_a_sweep(tmp_path, tiny_zoo):
    path = tmp_path / "seeded.yaml"
    text = write_sweep(tmp_path, tiny_zoo).read_text()
    body = text.split("preferences:")[0] + "merge_method: linear\npreference: [0.5, 0.5]\n"
    path.write_text(body + f"seeds: [0, 1]\noutput: {tmp_path / 'o'}\n")
    sweep = load_recipe(path)
    assert is_sweep(sweep)
    assert [p.seed for p in expand(sweep)] == [0, 1]
