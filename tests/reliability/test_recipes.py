"""Recipe input and the bounds that keep the arithmetic finite: recipe files that are not regular
files or are too large, preference entries, weights and lambda out of range, shard sizes out of
range, and shape mismatches that are not classification heads. Each case is one line on stderr,
its exit code, and nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.recipe.recipe_file import MAX_RECIPE_BYTES
from tests.helpers import write_recipe
from tests.reliability.conftest import invoke

RECIPE = """\
merge_method: ties
base_model: zoo_same/base
models:
  - model: zoo_same/a
  - model: zoo_same/b
parameters:
  density: 0.5
preference: [0.6, 0.4]
"""
PREF = "each entry must be a finite number from 0 to 1e6"
SCALE = "is out of range; allowed: a finite number from -1e6 to 1e6"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (following the zoo links) with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(cli, workdir: Path, recipe, code: int, *extra, commands=("validate", "plan", "run")):
    """Each command fails with `code`, one line on stderr, nothing written; that line."""
    before = snapshot(workdir)
    lines = []
    for command in commands:
        args = [command, recipe, *extra] + (["-o", "out", "-q"] if command == "run" else [])
        result = invoke(cli, *args)
        assert result.exit_code == code, (command, result.stderr, result.exception)
        assert "Traceback" not in result.stderr
        lines.append(result.stderr.splitlines())
        assert snapshot(workdir) == before, command
    assert all(len(one) == 1 and one == lines[0] for one in lines), lines
    assert not (workdir / "out").exists()
    return lines[0][0]


# -- recipe files ---------------------------------------------------------------------------------
def _prefkit(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line in a process of its own, so that a hang is a failure, not a wait."""
    code = "import sys; from prefkit.cli import main; sys.argv[0] = 'prefkit'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, timeout=60,
                          capture_output=True, text=True)


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "socket"])
def test_a_recipe_that_is_not_a_regular_file_is_refused_at_once(workdir, kind):
    import socket

    server = socket.socket(socket.AF_UNIX)
    try:
        _refused_at_once(workdir, kind, server)
    finally:
        server.close()


def _refused_at_once(workdir: Path, kind: str, server) -> None:
    if kind == "fifo":
        os.mkfifo(workdir / "recipe.yaml")
        path, what = "recipe.yaml", "a FIFO (named pipe)"
    elif kind == "socket":
        server.bind("recipe.yaml")  # relative (the working folder): socket paths are short
        path, what = "recipe.yaml", "a socket"
    else:
        path, what = "/dev/zero", "a character device"
    for command in ("validate", "plan", "run"):
        result = _prefkit(command, path, cwd=workdir)
        assert result.returncode == 3, result.stderr
        assert result.stderr.splitlines() == [
            f"Error: {path}: the recipe is {what}, not a regular file (give a YAML file)"]
        assert result.stdout.strip() == "" or command == "run"
    assert not (workdir / "runs").exists()


def test_a_folder_given_as_a_recipe_is_refused(cli, workdir):
    import prefkit
    from prefkit.errors import RecipeError

    with pytest.raises(RecipeError) as caught:
        prefkit.run(workdir / "zoo_same", output="out")
    assert str(caught.value) == (f"{workdir / 'zoo_same'}: the recipe is a folder, not a regular "
                                 "file (give a YAML file)")
    assert caught.value.exit_code == 3 and not (workdir / "out").exists()
    # the command line too: one line, not click's usage block
    line = fails(cli, workdir, "zoo_same", 3, commands=("validate", "plan", "run", "fetch"))
    assert line == "Error: zoo_same: the recipe is a folder, not a regular file (give a YAML file)"


def test_a_large_recipe_is_refused_before_it_is_read(cli, workdir):
    recipe = workdir / "recipe.yaml"
    with recipe.open("wb") as file:  # 200 MB, sparse: nothing of it is read
        file.write(RECIPE.encode())
        file.truncate(200 * 10**6)
    line = fails(cli, workdir, recipe, 3)
    assert line == (f"Error: {recipe}: the recipe is 200000000 bytes; at most 1048576 (1 MiB) are "
                    "read (a recipe lists models and parameters: is this the right file?)")


def test_a_recipe_of_exactly_the_limit_is_read(cli, workdir):
    text = RECIPE + "#" * (MAX_RECIPE_BYTES - len(RECIPE) - 1) + "\n"
    recipe = write_recipe(workdir, text)
    assert recipe.stat().st_size == MAX_RECIPE_BYTES
    assert invoke(cli, "validate", recipe).exit_code == 0
    recipe.write_text(text + "\n")
    assert fails(cli, workdir, recipe, 3).endswith(f"is {MAX_RECIPE_BYTES + 1} bytes; at most "
                                                   "1048576 (1 MiB) are read (a recipe lists "
                                                   "models and parameters: is this the right file?)")


def test_a_long_list_stops_at_the_value_limit(cli, workdir):
    recipe = write_recipe(workdir, RECIPE.replace("[0.6, 0.4]", "[" + "0, " * 100_001 + "1]"))
    assert recipe.stat().st_size < MAX_RECIPE_BYTES
    line = fails(cli, workdir, recipe, 3)
    # the 100,001st node (the keys and the root count too) is preference[99981], at column 299957
    assert line == (f"Error: {recipe}:8:299957: the recipe holds more than 100000 values (a recipe "
                    "lists models and parameters)")


# -- preference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preference, where, line", [
    ("[0.6, -0.4]", "8:19: preference[1]", f"-0.4 is negative; {PREF} (use 0 to ignore a task)"),
    ("[.inf, 0.4]", "8:14: preference[0]", f"inf is not a finite number; {PREF}"),
    ("[0.6, .nan]", "8:19: preference[1]", f"nan is not a finite number; {PREF}"),
    ("[1e7, 1]", "8:14: preference[0]", f"10000000.0 is over 1e6; {PREF}"),
    ("[1e-12, 1e-12]", "8:1: preference", "preference sums to 2e-12; the sum must be at least 1e-9 "
                                          "(scale every entry up: only the ratios count)"),
    ("[0, 0]", "8:1: preference", "every entry is 0; at least one must be more than 0 (the entries are "
                                "the models' shares: only their ratios count)"),
])
def test_preference_entries_are_bounded(cli, workdir, preference, where, line):
    recipe = write_recipe(workdir, RECIPE.replace("[0.6, 0.4]", preference))
    assert fails(cli, workdir, recipe, 3) == f"Error: {recipe}:{where}: {line}"


def test_preference_at_the_bounds_is_accepted(cli, workdir):
    recipe = write_recipe(workdir, RECIPE.replace("[0.6, 0.4]", "[1e6, 1e-9]"))
    result = invoke(cli, "run", recipe, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "out" / "prefkit.json").is_file()


# -- scale parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize("method, parameters, where, line", [
    ("ties", "  density: 0.5\n  lambda: 1e300\n", "8:3: parameters.lambda", f"1e+300 {SCALE}"),
    ("ties", "  density: 0.5\n  lambda: [1, 1e7]\n", "8:15: parameters.lambda[1]",
     f"10000000.0 {SCALE}"),
    ("ties", "  density: .nan\n", "7:3: parameters.density",
     "nan is not a finite number; must be a finite number from 0 to 1"),
    ("task_arithmetic", "  lambda: -.inf\n", "7:3: parameters.lambda", f"-inf {SCALE}"),
    ("task_arithmetic", "  weight: 2e6\n", "7:3: parameters.weight", f"2000000.0 {SCALE}"),
    ("linear", "  weight: -1e30\n", "7:3: parameters.weight", f"-1e+30 {SCALE}"),
    ("ties", "  weight: [{filter: mlp, value: 1e9}]\n", "7:26: parameters.weight[0].value",
     f"1000000000.0 {SCALE}"),
])
def test_scale_parameters_are_bounded(cli, workdir, method, parameters, where, line):
    text = RECIPE.replace("merge_method: ties", f"merge_method: {method}")
    text = text.replace("  density: 0.5\n", parameters).replace("preference: [0.6, 0.4]\n", "")
    if "weight" not in parameters:
        text += "  weight: 1.0\n"
    recipe = write_recipe(workdir, text)
    assert fails(cli, workdir, recipe, 3) == f"Error: {recipe}:{where}: {line}"


def test_a_model_weight_is_bounded(cli, workdir):
    text = RECIPE.replace("  - model: zoo_same/b\n", "  - model: zoo_same/b\n    parameters: "
                          "{weight: .inf}\n").replace("preference: [0.6, 0.4]\n", "")
    recipe = write_recipe(workdir, text + "  weight: 1.0\n")
    assert fails(cli, workdir, recipe, 3) == (f"Error: {recipe}:6:18: models[1].parameters.weight: "
                                              f"inf {SCALE}")


# -- shard size -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size, what", [("0", "is 0 bytes"), ("-5", "is not a size"),
                                        ("3999", "is 3999 bytes"), ("2TB", "is 2000000000000 bytes"),
                                        ("1e9", "is not a size"), ("9" * 400, "is not a size")])
def test_max_shard_size_out_of_range_is_a_usage_error(cli, workdir, size, what):
    recipe = write_recipe(workdir, RECIPE)
    assert invoke(cli, "run", recipe, "-o", "out", "-q").exit_code == 0
    before = snapshot(workdir)
    result = invoke(cli, "run", recipe, "-o", "out", "-q", "--force", "--max-shard-size", size)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"Error: --max-shard-size {size!r} {what}; allowed: 4KB "
                                          "to 1TB (give a size such as 500MB or 5GB, the default)"]
    assert snapshot(workdir) == before  # the old output is untouched


def test_max_shard_size_at_the_minimum_shards(cli, workdir):
    result = invoke(cli, "run", write_recipe(workdir, RECIPE), "-o", "out", "-q",
                    "--max-shard-size", "4KB")
    assert result.exit_code == 0, result.stderr
    assert len(list((workdir / "out").glob("model-*.safetensors"))) > 1


# -- shapes: only heads are padded --------------------------------------------------------------
def _toy(folder: Path, rows: int, labels: int, config: dict, head: str = "classifier") -> None:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    rng = np.random.default_rng(rows * 10 + labels)
    save_file({"encoder.layer.0.dense.weight": rng.standard_normal((rows, 3), dtype=np.float32),
               f"{head}.weight": rng.standard_normal((labels, 3), dtype=np.float32),
               f"{head}.bias": rng.standard_normal((labels,), dtype=np.float32)},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


TOY = "merge_method: linear\nmodels:\n  - model: m1\n  - model: m2\nparameters: {weight: 1.0}\n"


def test_a_non_head_shape_mismatch_is_not_padded(cli, workdir):
    _toy(workdir / "m1", 4, 2, {"model_type": "toy"})  # no label counts in the configs
    _toy(workdir / "m2", 6, 3, {"model_type": "toy"})
    recipe = write_recipe(workdir, TOY)
    line = fails(cli, workdir, recipe, 1, commands=("plan", "run"))
    assert line == (f"Error: {workdir / 'm2' / 'model.safetensors'}: tensor "
                    "'encoder.layer.0.dense.weight' has different shapes: [4, 3] in m1; [6, 3] in "
                    "m2 (only classification heads (differing label counts) can be padded: tensors "
                    "named classifier.…, score.…, pre_classifier.… or whose first dimension is "
                    "each model's label count in its config.json)")


@pytest.mark.parametrize("head, config", [
    ("classifier", lambda n: {"model_type": "toy"}),  # a head by its name
    ("out_proj", lambda n: {"model_type": "toy", "num_labels": n}),  # by the configs' label counts
])
def test_heads_are_padded(cli, workdir, head, config):
    from tests.helpers import load_tensors

    _toy(workdir / "m1", 4, 2, config(2), head)
    _toy(workdir / "m2", 4, 3, config(3), head)
    result = invoke(cli, "run", write_recipe(workdir, TOY), "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    out = load_tensors(workdir / "out")
    assert list(out[f"{head}.weight"].shape) == [3, 3] and list(out[f"{head}.bias"].shape) == [3]


def test_an_unnamed_tensor_is_not_a_head_when_the_label_counts_disagree(cli, workdir):
    _toy(workdir / "m1", 4, 2, {"model_type": "toy", "num_labels": 2}, "out_proj")
    _toy(workdir / "m2", 4, 3, {"model_type": "toy", "num_labels": 4}, "out_proj")
    before = snapshot(workdir)
    result = invoke(cli, "run", write_recipe(workdir, TOY), "-o", "out", "-q")
    assert result.exit_code == 1 and not (workdir / "out").exists()
    assert result.stderr.splitlines()[0] == (
        f"Error: {workdir / 'm2' / 'model.safetensors'}: tensor 'out_proj.bias' has different "
        "shapes: [2] in m1; [3] in m2 (only classification heads (differing label counts) can be "
        "padded: tensors named classifier.…, score.…, pre_classifier.… or whose first dimension "
        "is each model's label count in its config.json)")
    assert snapshot(workdir) == {**before, "recipe.yaml": snapshot(workdir)["recipe.yaml"]}
