"""Paths from recipes and flags: output names the file system cannot hold, outputs inside (or
around) input models, and one model listed twice under two names. Each case is one line on
stderr, its exit code (2 for a bad -o, 3 for a bad recipe), and nothing written or changed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.helpers import write_recipe
from tests.reliability.conftest import SAME_ZOO_TIES, invoke

RECIPE = SAME_ZOO_TIES
SIBLING = ("the file system's limit is 255 bytes per name, less room for the hidden sibling the "
           "output is written in")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (following the zoo links) with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(cli, workdir: Path, args: list, code: int) -> list[str]:
    """Run `args` for run and plan; both fail with `code`, write nothing; the stderr lines."""
    before = snapshot(workdir)
    lines = None
    for command in ("run", "plan"):
        result = invoke(cli, command, *args, *(["-q"] if command == "run" else []))
        assert result.exit_code == code, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert lines in (None, result.stderr.splitlines()), command
        lines = result.stderr.splitlines()
        assert snapshot(workdir) == before, command
    return lines


# -- output names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, line", [
    ("x" * 300, f"'{'x' * 24}…{'x' * 12}': its last folder name is 300 bytes; at most 213 are "
                f"allowed ({SIBLING})"),
    ("x" * 214, f"'{'x' * 24}…{'x' * 12}': its last folder name is 214 bytes; at most 213 are "
                f"allowed ({SIBLING})"),
    ("y" * 256 + "/out", f"'{'y' * 24}…{'y' * 8}/out': a name in it is 256 bytes; at most 255 are "
                         "allowed (the file system's limit is 255 bytes per name)"),
])
def test_output_names_the_file_system_cannot_hold(cli, workdir, name, line):
    recipe = write_recipe(workdir, RECIPE)
    lines = refused(cli, workdir, [recipe, "-o", name], 2)
    assert lines == [f"Error: output {line} (choose another output folder with -o)"]
    lines = refused(cli, workdir, [write_recipe(workdir, RECIPE + f"output: {json.dumps(name)}\n")], 3)
    assert lines == [f"Error: {recipe}:10:1: output: {line}"]
    assert invoke(cli, "validate", recipe).exit_code == 3


def test_the_longest_output_name_allowed_is_written(cli, workdir):
    name = "x" * 213  # its temporary sibling, .<name>.prefkit-tmp-<pid>-<start>, still fits
    result = invoke(cli, "run", write_recipe(workdir, RECIPE), "-o", name, "-q")
    assert result.exit_code == 0, result.stderr
    assert (workdir / name / "prefkit.json").is_file()


def test_output_name_with_a_nul_byte(cli, workdir):
    """A shell cannot pass a NUL byte in -o; a recipe's output: and the Python API can."""
    import prefkit
    from prefkit.errors import OutputError
    from tests.reliability.conftest import pinned_registry

    recipe = write_recipe(workdir, RECIPE + 'output: "out\\0x"\n')
    lines = refused(cli, workdir, [recipe], 3)
    assert lines == [f"Error: {recipe}:10:1: output: 'out\\x00x' holds a NUL byte, which no file "
                     "name may hold"]
    recipe = write_recipe(workdir, RECIPE)
    before = snapshot(workdir)
    with pytest.raises(OutputError) as caught:
        prefkit.run(recipe, output="out\x00x", registry=pinned_registry())
    assert caught.value.exit_code == 2 and snapshot(workdir) == before
    assert str(caught.value) == ("output 'out\\x00x' holds a NUL byte, which no file name may "
                                 "hold (choose another output folder with -o)")


def test_output_path_over_path_max(cli, workdir):
    name = "/".join(["y" * 200] * 20)  # 4019 bytes: the files inside it would pass PATH_MAX
    lines = refused(cli, workdir, [write_recipe(workdir, RECIPE), "-o", name], 2)
    assert lines == [f"Error: output '{'y' * 24}…{'y' * 12}' is 4019 bytes long; at most 3839 are "
                     "allowed (PATH_MAX 4096, less room for the files inside it) (choose another "
                     "output folder with -o)"]
    relative = "/".join(["y" * 200] * 19)[: 3839 - len(str(workdir))].rstrip("/")
    absolute = len(os.path.abspath(relative))  # too long once absolute, not as given
    assert len(relative) + 256 < 4096 <= absolute + 256
    lines = refused(cli, workdir, [write_recipe(workdir, RECIPE), "-o", relative], 2)
    assert lines[0].startswith(f"Error: output '{relative[:24]}…") and lines[0].endswith(
        f"is {absolute} bytes long as an absolute path; at most 3839 are allowed (PATH_MAX "
        "4096, less room for the files inside it) (choose another output folder with -o)")


def test_model_paths_the_file_system_cannot_hold(cli, workdir):
    text = RECIPE.replace("model: zoo_same/b\n", "model: " + "z" * 300 + "\n")
    recipe = write_recipe(workdir, text)
    for command in ("validate", "plan", "run"):
        result = invoke(cli, command, recipe)
        assert result.exit_code == 3 and "Traceback" not in result.stderr
        assert result.stderr.splitlines() == [
            f"Error: {recipe}:6:5: models[1].model: '{'z' * 24}…{'z' * 12}': a name in it is 300 "
            "bytes; at most 255 are allowed (the file system's limit is 255 bytes per name)"]
    nul = write_recipe(workdir, RECIPE.replace("base_model: zoo_same/base",
                                               'base_model: "zoo_same/base\\0"'))
    result = invoke(cli, "validate", nul)
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"Error: {nul}:2:1: base_model: 'zoo_same/base\\x00' holds a NUL byte, which no file name "
        "may hold"]


# -- where an output may go -----------------------------------------------------------------------
def test_output_may_not_hold_the_inputs_or_the_recipe(cli, workdir):
    recipe = write_recipe(workdir, RECIPE)
    for output, what in ((workdir, "would contain the recipe's folder"),
                         (workdir / "zoo_same", "would contain the input model zoo_same/base"),
                         (workdir.parent, "would contain the recipe's folder"),
                         (workdir / "zoo_same" / "a", "would contain the input model zoo_same/a")):
        lines = refused(cli, workdir, [recipe, "-o", output], 2)
        assert lines == [f"Error: output {output} {what} (choose another output folder with -o)"]
    assert (workdir / "zoo_same" / "base" / "config.json").exists()


@pytest.mark.parametrize("output", ["zoo_same/a/out", "zoo_same/b/deep/er", "./zoo_same/a/",
                                    "link/merged"])
def test_output_inside_an_input_model_is_refused(cli, workdir, output):
    (workdir / "link").symlink_to(workdir / "zoo_same" / "b")  # zoo_same/b under another name
    model = "zoo_same/b" if output.startswith(("zoo_same/b", "link")) else "zoo_same/a"
    verb = "would contain" if output == "./zoo_same/a/" else "is inside"
    recipe = write_recipe(workdir, RECIPE)
    lines = refused(cli, workdir, [recipe, "-o", output], 2)
    assert lines == [f"Error: output {Path(output)} {verb} the input model {model} (choose another "
                     "output folder with -o)"]
    recipe = write_recipe(workdir, RECIPE + f"output: {output}\n")
    lines = refused(cli, workdir, [recipe], 3)
    assert lines == [f"Error: {recipe}:10:1: output: output {Path(output)} {verb} the input model "
                     f"{model} (choose another output folder with output: or -o)"]


def test_an_existing_output_is_left_as_it_was(cli, workdir):
    recipe = write_recipe(workdir, RECIPE)
    assert invoke(cli, "run", recipe, "-o", "out", "-q").exit_code == 0
    inside = workdir / "zoo_same" / "a" / "out"
    before = snapshot(workdir)
    result = invoke(cli, "run", recipe, "-o", inside, "-q", "--force")
    assert result.exit_code == 2 and snapshot(workdir) == before
    assert not inside.exists()


# -- one model, two names -------------------------------------------------------------------------
def _hard_linked_copy(workdir: Path) -> str:
    copy = workdir / "copy_of_a"
    copy.mkdir()
    for file in (workdir / "zoo_same" / "a").resolve().iterdir():
        os.link(file, copy / file.name)
    return "copy_of_a"


@pytest.mark.parametrize("alias", ["symlink", "absolute", "hard links"])
def test_one_model_under_two_names_is_listed_twice(cli, workdir, alias):
    if alias == "symlink":
        (workdir / "also_a").symlink_to(workdir / "zoo_same" / "a")
        name = "also_a"
    elif alias == "absolute":
        name = str((workdir / "zoo_same" / "a").resolve())
    else:
        name = _hard_linked_copy(workdir)
    recipe = write_recipe(workdir, RECIPE.replace("model: zoo_same/b\n", f"model: {name}\n"))
    lines = refused(cli, workdir, [recipe, "-o", "out"], 3)
    assert lines == [f"Error: {recipe}:6:5: models[1].model: {name} is the same model as models[0] "
                     "(zoo_same/a): the same folder or files (list each model once; weigh it with "
                     "preference or weight)"]
    assert invoke(cli, "validate", recipe).exit_code == 0  # found once the folders are read


def test_the_same_path_spelled_twice_is_found_without_reading(cli, workdir):
    recipe = write_recipe(workdir, RECIPE.replace("model: zoo_same/b\n", "model: ./zoo_same/a/\n"))
    result = invoke(cli, "validate", recipe)
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"Error: {recipe}:6:5: models[1].model: ./zoo_same/a/ is listed twice (also models[0]) "
        "(list each model once; weigh it with preference or weight)"]


def test_one_base_with_two_adapters_is_not_a_duplicate(cli, workdir):
    text = RECIPE.replace("  - model: zoo_same/a\n", "  - model: zoo_same/a\n    lora: adapters/x\n")
    text = text.replace("  - model: zoo_same/b\n", "  - model: zoo_same/a\n    lora: adapters/y\n")
    assert invoke(cli, "validate", write_recipe(workdir, text)).exit_code == 0
    same = text.replace("adapters/y", "adapters/x")
    result = invoke(cli, "validate", write_recipe(workdir, same))
    assert result.exit_code == 3 and "models[1].model: zoo_same/a is listed twice" in result.stderr


def test_base_listed_under_another_name_is_not_merged_twice(cli, workdir):
    """linear merges an unlisted base_model as one more input: an alias of it is listed."""
    from tests.helpers import load_tensors

    (workdir / "the_base").symlink_to(workdir / "zoo_same" / "base")
    text = ("merge_method: linear\nbase_model: zoo_same/base\nmodels:\n  - model: {}\n"
            "  - model: zoo_same/a\nparameters: {{weight: 1.0}}\n")
    direct = invoke(cli, "run", write_recipe(workdir, text.format("zoo_same/base")), "-o", "d", "-q")
    alias = invoke(cli, "run", write_recipe(workdir, text.format("the_base")), "-o", "s", "-q")
    assert direct.exit_code == 0 and alias.exit_code == 0, alias.stderr
    d, s = load_tensors(workdir / "d"), load_tensors(workdir / "s")
    assert d.keys() == s.keys() and all(d[k].equal(s[k]) for k in d)
