"""Every command and every user error, through click's CliRunner."""

from __future__ import annotations

import errno
import json

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli, parse_size
from tests.conftest import builtin_plugins
from tests.helpers import load_tensors, write_recipe

TIES = """\
merge_method: ties
base_model: zoo/base
models:
  - model: zoo/ag_news
    task: ag_news
  - model: zoo/imdb
    task: imdb
  - model: zoo/mnli
    task: mnli
  - model: zoo/mrpc
    task: mrpc
parameters:
  density: 0.5
preference: [0.5, 0.2, 0.2, 0.1]
"""


@pytest.fixture
def cli():
    from prefkit.registry import load_registry

    return build_cli(lambda: load_registry(entry_points=False, plugins=builtin_plugins()))


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_methods_lists_builtins_with_plugin(cli):
    result = invoke(cli, "methods", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"linear", "task_arithmetic", "ties", "chebyshev", "epo",
                         "linear_scalarization", "adamerging"}
    assert rows["adamerging"]["kind"] == "solver"
    assert rows["linear"]["aliases"] == ["averaging"]
    assert rows["epo"]["kind"] == rows["chebyshev"]["kind"] == "trainer"
    assert rows["ties"]["plugin"] == "ties" and rows["ties"]["kind"] == "tensor"
    assert rows["ties"]["reference_url"] == "https://arxiv.org/abs/2306.01708"
    table = invoke(cli, "methods")
    assert "task_arithmetic" in table.stdout and "averaging" in table.stdout


def test_run_writes_output_and_json_line(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    result = invoke(cli, "run", recipe, "-o", workdir / "out", "-q")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["status"] == "ok" and line["tensors"] == 41 and line["method"] == "ties"
    files = sorted(p.name for p in (workdir / "out").iterdir())
    assert files == ["config.json", "model.safetensors", "prefkit.json", "recipe.yaml"]
    prov = json.loads((workdir / "out" / "prefkit.json").read_text())
    assert prov["preference"] == [0.5, 0.2, 0.2, 0.1] and len(prov["inputs"]) == 5
    assert len(prov["recipe_sha256"]) == 64
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert len(config["id2label"]) == 4  # heads padded to AG News's 4 labels


def test_run_sharded_output_has_hf_index(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    result = invoke(cli, "run", recipe, "-o", workdir / "out", "-q", "--max-shard-size", "8KB")
    assert result.exit_code == 0, result.stderr
    index = json.loads((workdir / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0].startswith("model-00001-of-")
    assert len(index["weight_map"]) == 41
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in load_tensors(workdir / "out").values())


def test_set_overrides_change_result(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    a = invoke(cli, "run", recipe, "-o", workdir / "a", "-q")
    b = invoke(cli, "run", recipe, "-o", workdir / "b", "-q", "--set", "parameters.density=0.3",
               "--set", "preference=[0.7,0.1,0.1,0.1]")
    assert a.exit_code == 0 and b.exit_code == 0, b.stderr
    ta, tb = load_tensors(workdir / "a"), load_tensors(workdir / "b")
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not ta[name].equal(tb[name])
    saved = (workdir / "b" / "recipe.yaml").read_text()
    assert "density: 0.3" in saved and "0.7" in saved


def test_existing_output_needs_force(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    assert invoke(cli, "run", recipe, "-o", workdir / "out", "-q").exit_code == 0
    again = invoke(cli, "run", recipe, "-o", workdir / "out", "-q")
    assert again.exit_code == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    forced = invoke(cli, "run", recipe, "-o", workdir / "out", "-q", "--force")
    assert forced.exit_code == 0


def test_batch_keeps_going_and_exits_with_worst(cli, workdir):
    good = write_recipe(workdir, TIES.replace("preference", "output: out_good\npreference"), "good.yaml")
    bad = write_recipe(workdir, TIES.replace("merge_method: ties", "merge_method: tiez"), "bad.yaml")
    missing = write_recipe(workdir, TIES.replace("zoo/imdb", "zoo/nope") + "output: out_m\n", "m.yaml")
    result = invoke(cli, "run", bad, good, missing, "-q")
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["failed", "ok", "failed"]
    assert result.exit_code == 3
    assert (workdir / "out_good" / "model.safetensors").exists()
    assert not (workdir / "out_m").exists()
    assert "did you mean 'ties'" in result.stderr


def test_output_with_several_recipes_is_usage_error(cli, workdir):
    r = write_recipe(workdir, TIES)
    result = invoke(cli, "run", r, r, "-o", "x")
    assert result.exit_code == 2 and "one recipe" in result.stderr


def test_validate_ok_and_reads_no_model(cli, workdir):
    recipe = write_recipe(workdir, TIES.replace("zoo/base", "not/there/at-all"))
    result = invoke(cli, "validate", recipe)
    assert result.exit_code == 0 and result.stdout.strip().endswith(": ok")


def test_plan_json(cli, workdir):
    recipe = write_recipe(workdir, TIES.replace("density: 0.5", "density: [0.2, 0.8]"))
    result = invoke(cli, "plan", recipe, "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    by_name = {t["name"]: t for t in plan["tensors"]}
    q0 = by_name["roberta.encoder.layer.0.attention.self.query.weight"]
    q1 = by_name["roberta.encoder.layer.1.attention.self.query.weight"]
    head = by_name["classifier.out_proj.weight"]
    assert (q0["t"], q1["t"], head["t"]) == (0.0, 1.0, 0.0)
    assert [mp["density"] for mp in q1["model_params"]] == [pytest.approx(0.8)] * 4
    assert [mp["weight"] for mp in q0["model_params"]] == pytest.approx([2.0, 0.8, 0.8, 0.4])
    assert head["shape"] == [4, 16] and head["base"] is None
    assert plan["total_bytes"] == sum(t["bytes"] for t in plan["tensors"])
    table = invoke(cli, "plan", recipe)
    assert "classifier.out_proj.weight" in table.stdout and "zero-padded" in table.stdout


# --- errors: one line, file:line:col, exit code, no traceback, nothing written ---------------

ERROR_CASES = [
    ("merge_method: ties\nmodels: [\n", 3, "recipe.yaml:3:1: invalid YAML"),
    ("merge_method: ties\nmerge_method: linear\nmodels: [{model: a}]\n", 3,
     "recipe.yaml:2:1: merge_method: duplicate key"),
    (TIES.replace("parameters:", "paramters:"), 3, "recipe.yaml:12:1: paramters: unknown key"),
    (TIES.replace("merge_method: ties", "merge_method: tis"), 3,
     "recipe.yaml:1:1: merge_method: unknown merge method 'tis' (did you mean 'ties'?"),
    (TIES.replace("density: 0.5", "density: 1.5"), 3,
     "recipe.yaml:13:3: parameters.density: 1.5 is more than 1; must be a number from 0 to 1"),
    (TIES.replace("density: 0.5", "densty: 0.5"), 3,
     "recipe.yaml:13:3: parameters.densty: unknown parameter for method 'ties'"),
    (TIES.replace("density: 0.5", "density: [0.1, high]"), 3,
     "parameters.density[1]: 'high' is not a number; must be a number from 0 to 1"),
    (TIES.replace("[0.5, 0.2, 0.2, 0.1]", "[0.5, 0.5]"), 3,
     "recipe.yaml:14:1: preference: has 2 entries for 4 models"),
    (TIES.replace("[0.5, 0.2, 0.2, 0.1]", "[0.5, -0.2, 0.2, 0.1]"), 3, "preference[1]: -0.2 is negative"),
    (TIES.replace("[0.5, 0.2, 0.2, 0.1]", "[0, 0, 0, 0]"), 3,
     "preference: every entry is 0; at least one must be more than 0"),
    (TIES.replace("[0.5, 0.2, 0.2, 0.1]", "[.nan, 0.2, 0.2, 0.1]"), 3,
     "preference[0]: nan is not a finite number"),
    (TIES.replace("density: 0.5", "weight: 1.0"), 3,
     "recipe.yaml:13:3: parameters.weight: weight and preference both given"),
    (TIES.replace("preference: [0.5, 0.2, 0.2, 0.1]", ""), 3,
     "recipe.yaml:4:5: models[0]: parameter 'weight' is not set for model zoo/ag_news"),
    (TIES.replace("base_model: zoo/base\n", ""), 3, "method 'ties' needs base_model"),
    (TIES.replace("zoo/imdb", "zoo/nothing"), 3,
     "recipe.yaml:6:5: models[1].model: model 'zoo/nothing': no such folder"),
    (TIES.replace("dtype", "x") + "dtype: float33\n", 3, "dtype: unknown dtype 'float33'"),
    (TIES + "slices: []\n", 3, "slices: mergekit's 'slices' is not supported by prefkit"),
    (TIES.replace("density: 0.5", "lambda: 1.0\n  normalize: true\n  trim: global\n  density: [0.1, 0.5]"),
     3, "with trim: global, density must be one value per model"),
    ("- just\n- a list\n", 3, "recipe.yaml:1:1: a recipe must be a YAML mapping"),
]


@pytest.mark.parametrize("text, code, message", ERROR_CASES, ids=range(len(ERROR_CASES)))
def test_errors_are_one_clear_line(cli, workdir, text, code, message):
    recipe = write_recipe(workdir, text)
    result = invoke(cli, "run", recipe, "-o", workdir / "out", "-q")
    assert result.exit_code == code
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "out").exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out")]


def test_missing_recipe_file(cli, workdir):
    result = invoke(cli, "validate", workdir / "nope.yaml")
    assert result.exit_code == 3 and "recipe file not found" in result.stderr


def test_bad_set_syntax(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    result = invoke(cli, "validate", recipe, "--set", "parameters.density")
    assert result.exit_code == 3 and "expected KEY=VALUE" in result.stderr


def test_set_error_points_at_the_override(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    result = invoke(cli, "validate", recipe, "--set", "parameters.density=2")
    assert "--set parameters.density=2: parameters.density" in result.stderr


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_running_out_of_descriptors_anywhere_is_one_line(cli, workdir, monkeypatch, code):
    """Out of file descriptors where no reader or writer turned it into a PrefkitError: the CLI
    still says it in one line with what to do (exit 1); with --traceback it is raised as is.
    Other OSErrors stay bugs, with their traceback."""
    import prefkit.commands.run_batch as module

    def fail(*args, **kwargs):
        raise OSError(code, "Too many open files", "/some/file")

    monkeypatch.setattr(module, "run_batch", fail)
    recipe = write_recipe(workdir, TIES)
    result = invoke(cli, "run", recipe, "-o", workdir / "out")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [
        "Error: /some/file: too many open files (raise the limit of open files in the shell that "
        "runs prefkit (`ulimit -n 4096`, or higher), then run again)"]
    shown = CliRunner().invoke(cli, ["--traceback", "run", str(recipe), "-o", str(workdir / "o")])
    assert isinstance(shown.exception, OSError) and shown.exception.errno == code
    monkeypatch.setattr(module, "run_batch", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "x")))
    other = invoke(cli, "run", recipe, "-o", workdir / "out")
    assert isinstance(other.exception, OSError) and other.exception.errno == 5


def test_traceback_flag_shows_traceback(cli, workdir):
    recipe = write_recipe(workdir, TIES.replace("merge_method: ties", "merge_method: tis"))
    result = CliRunner().invoke(cli, ["--traceback", "plan", str(recipe)])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "UnknownMethodError"


@pytest.mark.parametrize("text, size", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                         ("1000", 1000), ("1.5kb", 1500)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_missing_parameter_is_reported_once_per_model(cli, workdir):
    recipe = write_recipe(workdir, TIES.replace("preference: [0.5, 0.2, 0.2, 0.1]", ""))
    result = invoke(cli, "validate", recipe)
    assert result.exit_code == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 4 and all("parameter 'weight' is not set for model zoo/" in e for e in errors)
    assert errors[1].startswith(f"Error: {recipe}:6:5: models[1]: ")


def test_paper_parameter_names_are_aliases(cli, workdir):
    recipe = write_recipe(workdir, TIES.replace("density: 0.5", "k: 0.3\n  lambda_merge: 0.7"))
    result = invoke(cli, "plan", recipe, "--json")
    assert result.exit_code == 0, result.stderr
    tensor = json.loads(result.stdout)["tensors"][0]
    assert tensor["params"]["lambda"] == 0.7
    assert {mp["density"] for mp in tensor["model_params"]} == {0.3}
    both = write_recipe(workdir, TIES.replace("density: 0.5", "k: 0.3\n  density: 0.2"))
    result = invoke(cli, "validate", both)
    assert result.exit_code == 3
    assert "given twice: 'k' and 'density' name the same parameter (keep one of them)" in result.stderr


def test_plain_progress_when_not_a_terminal(cli, workdir):
    recipe = write_recipe(workdir, TIES)
    result = invoke(cli, "run", recipe, "-o", workdir / "out")
    assert result.exit_code == 0
    assert f"ties → {workdir / 'out'}: 41 tensors, 0.0 MB" in result.stderr
    assert "2 head tensors zero-padded to 4 classes (classifier.out_proj.bias, " in result.stderr
    assert "\x1b[" not in result.stderr  # no terminal control codes off a terminal


def test_tokenizer_files_are_copied(cli, workdir, tmp_path):
    import shutil

    base = tmp_path / "tok_base"
    shutil.copytree(workdir / "zoo" / "base", base)
    (base / "tokenizer.json").write_text('{"base": true}')
    (base / "vocab.txt").write_text("a\nb\n")
    other = tmp_path / "tok_other"
    other.mkdir()
    (other / "tokenizer.json").write_text('{"other": true}')
    text = TIES.replace("zoo/base", str(base))
    result = invoke(cli, "run", write_recipe(workdir, text), "-o", workdir / "a", "-q")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "a" / "tokenizer.json").read_text() == '{"base": true}'
    assert (workdir / "a" / "vocab.txt").exists()
    text += f"tokenizer_source: {other}\n"
    result = invoke(cli, "run", write_recipe(workdir, text), "-o", workdir / "b", "-q")
    assert (workdir / "b" / "tokenizer.json").read_text() == '{"other": true}'


def test_unsupported_checkpoint_dtype_is_named(cli, workdir, tmp_path):
    import shutil
    import struct

    bad = tmp_path / "bad_dtype"
    shutil.copytree(workdir / "zoo" / "mrpc", bad)
    header = json.dumps({"odd.weight": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    (bad / "model-00003-of-00003.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                                            + b"\0" * 4)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    index["weight_map"]["odd.weight"] = "model-00003-of-00003.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    result = invoke(cli, "run", write_recipe(workdir, TIES.replace("zoo/mrpc", str(bad))),
                    "-o", workdir / "out", "-q")
    assert result.exit_code == 1  # the checkpoint's fault, not the recipe's
    assert "tensor 'odd.weight' has unsupported dtype 'U16'" in result.stderr
    assert not (workdir / "out").exists()
