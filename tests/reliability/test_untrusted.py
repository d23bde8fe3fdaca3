"""Untrusted inputs: recipes never run or import code and never make prefkit write outside their
output folder; code comes only from installed entry points or an explicit --plugins-dir; hub
downloads never fetch pickle or code files unless --allow-pickle."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from tests.helpers import write_recipe
from tests.reliability.conftest import SAME_ZOO_TIES, invoke

RECIPE = SAME_ZOO_TIES


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


TAG = "!!python/object/apply:os.system ['touch {marker}']"


@pytest.mark.parametrize("line, replacement, message", [
    ("merge_method: ties", f"merge_method: {TAG}", "unsupported YAML tag"),
    ("  - model: zoo_same/b", f"  - model: {TAG}", "unsupported YAML tag"),
    ("parameters: {density: 0.5}", "parameters: !!python/object/new:os.system ['touch {marker}']",
     "unsupported YAML tag"),
    ("preference: [0.6, 0.4]", "preference: !!python/name:os.system ''",
     "could not determine a constructor"),
    ("preference: [0.6, 0.4]", f"? {TAG}\n: 1", "a key must be a plain value"),
])
def test_yaml_tags_never_run_code(cli, workdir, line, replacement, message):
    marker = workdir / "pwned"
    text = RECIPE.replace(line, replacement.format(marker=marker))
    recipe = write_recipe(workdir, text)
    for command in ("validate", "plan", "run"):
        result = invoke(cli, command, recipe)
        assert result.exit_code == 3, result.stderr
        (error,) = result.stderr.splitlines()
        assert error.startswith(f"Error: {recipe}:") and message in error, error
    set_tag = invoke(cli, "validate", write_recipe(workdir, RECIPE), "--set",
                     f"output={TAG.format(marker=marker)}")
    assert set_tag.exit_code == 3 and "--set output" in set_tag.stderr
    assert not marker.exists()


def test_python_files_beside_a_recipe_are_not_imported(cli, workdir):
    marker = workdir / "imported"
    (workdir / "ties.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (workdir / "prefkit_plugin.py").write_text(f"open({str(marker)!r}, 'w')\n")
    recipe = write_recipe(workdir, RECIPE.replace("merge_method: ties",
                                                  "merge_method: prefkit_plugin"))
    result = invoke(cli, "run", recipe, "-q")
    assert result.exit_code == 3 and "unknown merge method 'prefkit_plugin'" in result.stderr
    assert invoke(cli, "run", write_recipe(workdir, RECIPE), "-o", "out", "-q").exit_code == 0
    assert not marker.exists()


def test_a_merge_writes_only_inside_its_output_folder(cli, workdir):
    """Everything a run creates (per-task heads included) is under the output folder."""
    recipe = write_recipe(workdir, RECIPE + "heads: per_task\noutput: runs/x\n")
    before = files_under(workdir)
    result = invoke(cli, "run", recipe, "-q")
    assert result.exit_code == 0, result.stderr
    created = files_under(workdir) - before
    assert created and all(p == "runs" or p.startswith("runs/x") for p in created), created
    assert {"runs/x/heads/alpha.safetensors", "runs/x/heads/beta.safetensors"} <= created


@pytest.mark.parametrize("field, value", [
    ("models[0].task", "../../escape"), ("models[0].task", "/tmp/escape"),
    ("models[0].task", ".hidden"), ("evaluate.tasks", "[a/b]"),
    ("tasks", "{'../x': {dataset: csv, text_fields: [t], label_names: [a, b]}}"),
])
def test_task_names_cannot_be_paths(cli, workdir, field, value):
    text = RECIPE + "heads: per_task\n"
    if field == "models[0].task":
        text = text.replace("task: alpha", f"task: {value!r}")
    elif field == "evaluate.tasks":
        text += f"evaluate: {{tasks: {value}}}\n"
    else:
        text += f"tasks: {value}\n"
    result = invoke(cli, "run", write_recipe(workdir, text), "-q")
    assert result.exit_code == 3, result.stderr
    assert "may hold only letters, digits, '_', '.' and '-' (it names files)" in result.stderr
    assert not (workdir / "runs").exists()


def test_force_replaces_only_prefkit_outputs(cli, workdir):
    precious = workdir / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    result = invoke(cli, "run", write_recipe(workdir, RECIPE), "-o", precious, "-q", "--force")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: output {precious} exists and was not written by prefkit (no prefkit.json) "
        "(--force replaces only prefkit outputs; move it or choose another -o)"]
    assert (precious / "chapter1.tex").read_text() == "years of work"
    (precious / "chapter1.tex").unlink()  # an empty folder may be replaced
    assert invoke(cli, "run", workdir / "recipe.yaml", "-o", precious, "-q",
                  "--force").exit_code == 0


PLUGIN = '''
from prefkit.api import TensorMethod, WeightParams, Params, hookimpl


class Halve(TensorMethod):
    name = "halve_sum"
    summary = "Half the weighted sum."
    reference_url = "https://example.org"
    base = "input"
    Params = Params
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        return 0.5 * sum(p.weight * t for p, t in zip(model_params, tensors))


@hookimpl
def prefkit_register_methods(register):
    register(Halve())
'''


def test_plugins_come_from_an_explicit_plugins_dir(cli, workdir):
    from tests.helpers import load_tensors

    plugins = workdir / "my_plugins"
    plugins.mkdir()
    (plugins / "halve.py").write_text(PLUGIN)
    recipe = write_recipe(workdir, "merge_method: halve_sum\nmodels:\n  - model: zoo_same/a\n"
                          "  - model: zoo_same/b\nparameters: {weight: 1.0}\n")
    without = invoke(cli, "run", recipe, "-o", "out", "-q")
    assert without.exit_code == 3 and "unknown merge method 'halve_sum'" in without.stderr
    listed = invoke(cli, "--plugins-dir", plugins, "methods", "--json")
    assert '"halve_sum"' in listed.stdout and '"plugin": "halve"' in listed.stdout
    ran = invoke(cli, "--plugins-dir", plugins, "run", recipe, "-o", "out", "-q")
    assert ran.exit_code == 0, ran.stderr
    a, b, out = (load_tensors(workdir / p) for p in ("zoo_same/a", "zoo_same/b", "out"))
    name = "roberta.encoder.layer.0.output.dense.weight"
    assert out[name].equal(0.5 * (a[name] + b[name]))


def test_a_broken_plugin_file_is_one_error(cli, workdir):
    plugins = workdir / "my_plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("import not_a_module_anywhere\n")
    result = invoke(cli, "--plugins-dir", plugins, "methods")
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"Error: {plugins / 'broken.py'}: the plugin failed to import (ModuleNotFoundError: No "
        "module named 'not_a_module_anywhere') (fix the file or remove it from --plugins-dir)"]


PICKLE_NAMES = ["pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "model.pt", "model.pth",
                "training_args.bin", "optimizer.pt", "model.ckpt", "x.pkl", "modeling_evil.py"]


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_hub_downloads_fetch_no_pickle_or_code(monkeypatch, tmp_path, allow_pickle):
    import huggingface_hub

    from prefkit.io.hub import resolve_model

    asked = {}

    def snapshot_download(repo_id, **kwargs):
        asked.update(kwargs)
        folder = tmp_path / "snapshot"
        folder.mkdir(exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    resolve_model("someorg/model", tmp_path, allow_pickle)
    patterns = asked["allow_patterns"]
    fetched = {n for n in PICKLE_NAMES if any(fnmatch.fnmatch(n, p) for p in patterns)}
    assert fetched == ({"pytorch_model.bin", "pytorch_model-00001-of-00002.bin"} if allow_pickle
                       else set())
    for needed in ("model.safetensors", "model.safetensors.index.json", "config.json"):
        assert any(fnmatch.fnmatch(needed, p) for p in patterns)
