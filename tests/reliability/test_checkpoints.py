"""Damaged, lying and unsafe checkpoints, built here from the tiny zoo (no binaries committed).

Every case runs `prefkit run` on a recipe whose second model is the damaged copy and expects one
error line naming the file (and the tensor when there is one), a non-zero exit code, no traceback
and no output."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prefkit.engine.executor import execute
from prefkit.errors import CheckpointError
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from tests.helpers import load_tensors, write_recipe
from tests.reliability.conftest import invoke

RECIPE = """\
merge_method: task_arithmetic
base_model: zoo/base
models:
  - model: zoo/ag_news
  - model: bad
parameters: {weight: 0.5}
"""
SHARD = "model-00001-of-00002.safetensors"
INDEX = "model.safetensors.index.json"
FIRST = "classifier.dense.bias"  # the first tensor of SHARD's data section
NAME = "roberta.encoder.layer.0.attention.self.query.weight"


def read_st(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(file: Path, header, data: bytes) -> None:
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    file.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def edit_header(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        header, data = read_st(folder / SHARD)
        write_st(folder / SHARD, edit(header) or header, data)
    return damage


def _set(entry: str, key: str, value) -> Callable[[dict], None]:
    return lambda h: h[entry].__setitem__(key, value)


def _truncate(keep: int | None = None, drop: int = 0) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        raw = (folder / SHARD).read_bytes()
        (folder / SHARD).write_bytes(raw[:keep] if keep is not None else raw[:-drop])
    return damage


def _swap_offsets(h: dict) -> None:
    h["classifier.out_proj.bias"]["data_offsets"] = [0, 8]  # overlaps classifier.dense.bias


def _index(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        index = json.loads((folder / INDEX).read_text())
        edit(index)
        (folder / INDEX).write_text(json.dumps(index))
    return damage


def _move_to_other_shard(index: dict) -> None:
    index["weight_map"][FIRST] = "model-00002-of-00002.safetensors"


def _extra_tensor(folder: Path) -> None:
    tensors = load_tensors_file(folder / SHARD)
    tensors["stowaway.weight"] = torch.zeros(2)
    save_file(tensors, str(folder / SHARD))


def load_tensors_file(file: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(file))


def _retype(folder: Path) -> None:
    """The same tensor name as an integer tensor (a different architecture)."""
    shard = json.loads((folder / INDEX).read_text())["weight_map"][NAME]
    tensors = load_tensors_file(folder / shard)
    tensors[NAME] = torch.zeros(tensors[NAME].shape, dtype=torch.int64)
    save_file(tensors, str(folder / shard))


# (id, damage, exit code, the text after "Error: " up to the hint; {shard} / {bad} are paths)
HEADER_CASES = [
    ("no_header", _truncate(keep=5), 3, "{shard}: truncated safetensors file (no header)"),
    ("header_cut_short", _truncate(keep=100), 3,
     "{shard}: truncated safetensors file (header cut short)"),
    ("data_truncated", _truncate(drop=100), 3,
     "{shard}: tensor 'roberta.encoder.layer.1.output.dense.weight' lies past the end of the file "
     "(truncated: 100 bytes missing)"),
    ("trailing_bytes", lambda f: (f / SHARD).write_bytes((f / SHARD).read_bytes() + b"\0" * 12), 3,
     "{shard}: 12 unexpected bytes after the last tensor (corrupt, or not written by a safetensors "
     "writer)"),
    ("header_not_json", lambda f: write_st(f / SHARD, b"{not json", read_st(f / SHARD)[1]), 3,
     "{shard}: corrupt safetensors header (not JSON: Expecting property name enclosed in double "
     "quotes: line 1 column 2 (char 1))"),
    ("header_a_list", edit_header(lambda h: ["tensor"]), 3,
     "{shard}: corrupt safetensors header (not a JSON object)"),
    ("header_length_absurd", lambda f: (f / SHARD).write_bytes(
        struct.pack("<Q", 2**40) + (f / SHARD).read_bytes()[8:]), 3,
     "{shard}: safetensors header of 1099511627776 bytes is not plausible"),
    ("lying_shape", edit_header(_set(FIRST, "shape", [17])), 3,
     "{shard}: tensor 'classifier.dense.bias': corrupt header entry (64 bytes for a float32 tensor "
     "of shape [17], which needs 68)"),
    ("lying_dtype", edit_header(_set(FIRST, "dtype", "F64")), 3,
     "{shard}: tensor 'classifier.dense.bias': corrupt header entry (64 bytes for a float64 tensor "
     "of shape [16], which needs 128)"),
    ("overlapping_offsets", edit_header(_swap_offsets), 3,
     "{shard}: tensor 'classifier.dense.bias': corrupt header (its bytes overlap tensor "
     "'classifier.out_proj.bias')"),
    ("gap_before_tensor", edit_header(_set(FIRST, "data_offsets", [8, 72])), 3,
     "{shard}: tensor 'classifier.dense.bias': corrupt header (8 unused bytes before it)"),
    ("offsets_not_numbers", edit_header(_set(FIRST, "data_offsets", ["0", "64"])), 3,
     "{shard}: tensor 'classifier.dense.bias': corrupt header entry (data_offsets ['0', '64'] is not "
     "[begin, end])"),
    ("negative_shape", edit_header(_set(FIRST, "shape", [-16])), 3,
     "{shard}: tensor 'classifier.dense.bias': corrupt header entry (shape [-16] is not a list of "
     "non-negative integers)"),
    ("unknown_dtype", edit_header(_set(FIRST, "dtype", "C64")), 3,
     "{shard}: tensor 'classifier.dense.bias' has unsupported dtype 'C64'"),
    ("index_names_missing_shard", _index(lambda i: i["weight_map"].__setitem__(
        FIRST, "model-00003-of-00003.safetensors")), 3,
     "{bad}/model.safetensors.index.json: lists shard(s) that do not exist: "
     "model-00003-of-00003.safetensors"),
    ("index_names_wrong_shard", _index(_move_to_other_shard), 3,
     "{bad}/model.safetensors.index.json: tensor 'classifier.dense.bias' is listed in "
     "model-00002-of-00002.safetensors, which does not hold it"),
    ("index_escapes_folder", _index(lambda i: i["weight_map"].__setitem__(
        FIRST, "../ag_news/" + SHARD)), 3,
     "{bad}/model.safetensors.index.json: tensor 'classifier.dense.bias' names shard "
     "'../ag_news/model-00001-of-00002.safetensors', which is not a .safetensors file in the "
     "checkpoint folder"),
    ("index_not_json", lambda f: (f / INDEX).write_text("{"), 3,
     "{bad}/model.safetensors.index.json: not a valid safetensors index (Expecting property name "
     "enclosed in double quotes: line 1 column 2 (char 1))"),
    ("shard_tensor_not_in_index", _extra_tensor, 3,
     "{shard}: tensor 'stowaway.weight' is not listed in model.safetensors.index.json"),
    ("config_not_json", lambda f: (f / "config.json").write_text("{'a': 1}"), 3,
     "{bad}/config.json: invalid JSON (Expecting property name enclosed in double quotes: line 1 "
     "column 2 (char 1))"),
    ("float_and_int_dtypes", _retype, 1,
     "{bad}/model-00001-of-00002.safetensors: tensor "
     "'roberta.encoder.layer.0.attention.self.query.weight' is int64 here but float32 in zoo/ag_news"),
]


@pytest.fixture
def bad(workdir) -> Path:
    """A private copy of zoo/imdb at `bad/`, for the test to damage."""
    folder = workdir / "bad"
    shutil.copytree(workdir / "zoo" / "imdb", folder)
    return folder


def run_fails(cli, workdir, code: int, expected: str, *extra) -> str:
    recipe = write_recipe(workdir, RECIPE)
    result = invoke(cli, "run", recipe, "-o", workdir / "out", "-q", *extra)
    lines = result.stderr.splitlines()
    assert result.exit_code == code, result.stderr
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert expected in lines[0], (lines[0], expected)
    assert not (workdir / "out").exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out")]
    return lines[0]


@pytest.mark.parametrize("damage, code, expected", [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
def test_damaged_checkpoint_is_one_clear_error(cli, workdir, bad, damage, code, expected):
    damage(bad)
    expected = expected.format(shard=bad / SHARD, bad=bad)
    line = run_fails(cli, workdir, code, expected)
    if code == 3:  # found while planning: the line also points at the recipe's entry
        assert line.startswith(f"Error: {workdir / 'recipe.yaml'}:5:5: models[1].model: "), line


def test_file_that_shrinks_after_planning(workdir, bad, registry):
    """A shard truncated between planning and merging: the read fails, nothing is written."""
    plan = resolve(load_recipe(write_recipe(workdir, RECIPE)), registry, workdir / "out")
    shard = bad / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=rf"^{shard}: tensor '.*' is truncated \(the file "
                       r"shrank after it was indexed\)$"):
        execute(plan)
    assert sorted(p.name for p in workdir.iterdir() if "out" in p.name) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_values_are_refused_unless_allowed(cli, workdir, bad, value):
    tensors = load_tensors_file(bad / SHARD)
    tensors[FIRST][3] = value
    save_file(tensors, str(bad / SHARD))
    run_fails(cli, workdir, 1, f"{bad / SHARD}: tensor '{FIRST}' holds 1 NaN/Inf value(s) (the "
              "checkpoint is damaged or diverged in training; pass --allow-nonfinite to merge it "
              "anyway)")
    result = invoke(cli, "run", workdir / "recipe.yaml", "-o", workdir / "out", "-q",
                    "--allow-nonfinite")
    assert result.exit_code == 0, result.stderr
    merged = load_tensors(workdir / "out")[FIRST]
    assert not torch.isfinite(merged[3]) and torch.isfinite(merged[:3]).all()


def test_huge_finite_values_are_not_mistaken_for_nonfinite(workdir, bad, registry):
    """The fast check sums the tensor; a sum that overflows must not be reported."""
    tensors = load_tensors_file(bad / SHARD)
    tensors[FIRST][:] = 3e38  # finite, but 16 of them overflow a float32 sum
    save_file(tensors, str(bad / SHARD))
    plan = resolve(load_recipe(write_recipe(workdir, RECIPE)), registry, workdir / "out")
    execute(plan)
    assert (workdir / "out" / "model.safetensors").exists()


def test_missing_tensor_names_the_checkpoint(cli, workdir):
    from prefkit.testing import make_finetuned

    make_finetuned(workdir / "bad", workdir / "zoo" / "base", seed=9, num_labels=2,
                   drop=(NAME,))
    run_fails(cli, workdir, 1, f"{workdir / 'bad'}: tensor '{NAME}' is in zoo/ag_news but missing "
              "from bad (all models must share one architecture)")


# --- pickle checkpoints --------------------------------------------------------------------------

class _Exploit:
    """Pickles to a call of `open(path, "w")`: loading it without weights_only creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_model(folder: Path, state) -> None:
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    shutil.copyfile(folder.parent / "zoo" / "imdb" / "config.json", folder / "config.json")


def test_pickle_checkpoint_needs_allow_pickle(cli, workdir):
    _pickle_model(workdir / "bad", load_tensors(workdir / "zoo" / "imdb"))
    line = run_fails(cli, workdir, 3, f"{workdir / 'bad'}: holds only pickle weights "
                     "(pytorch_model.bin) (pickle files can run code when loaded: convert the model "
                     "to safetensors, or pass --allow-pickle if you trust it; it is then read with "
                     "torch.load(weights_only=True))")
    assert "models[1].model" in line
    plan = invoke(cli, "plan", workdir / "recipe.yaml")
    assert plan.exit_code == 3 and "holds only pickle weights" in plan.stderr
    ok = invoke(cli, "run", workdir / "recipe.yaml", "-o", workdir / "out", "-q", "--allow-pickle")
    assert ok.exit_code == 0, ok.stderr
    assert invoke(cli, "plan", workdir / "recipe.yaml", "--allow-pickle").exit_code == 0


def test_malicious_pickle_never_runs_even_when_allowed(cli, workdir):
    marker = workdir / "pwned"
    state = load_tensors(workdir / "zoo" / "imdb")
    state["payload"] = _Exploit(marker)
    _pickle_model(workdir / "bad", state)
    for extra in ((), ("--allow-pickle",)):
        result = invoke(cli, "run", workdir / "recipe.yaml" if extra else write_recipe(
            workdir, RECIPE), "-o", workdir / "out", "-q", *extra)
        assert result.exit_code == 3 and "Traceback" not in result.stderr, result.stderr
        assert not marker.exists()
    assert "cannot read PyTorch checkpoint (Weights only load failed" in result.stderr


def test_pickle_that_is_not_a_state_dict(cli, workdir):
    _pickle_model(workdir / "bad", [torch.zeros(2)])
    run_fails(cli, workdir, 3, f"{workdir / 'bad' / 'pytorch_model.bin'}: not a state dict "
              "(tensor name → tensor)", "--allow-pickle")


def test_eval_refuses_pickle_only_folder(cli, workdir):
    _pickle_model(workdir / "bad", load_tensors(workdir / "zoo" / "imdb"))
    result = invoke(cli, "eval", workdir / "bad", "--tasks", "imdb", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"Error: {workdir / 'bad'}: holds only pickle weights (pytorch_model.bin) (pickle files "
        "can run code when loaded: convert the model to safetensors, or pass --allow-pickle if you "
        "trust it; it is then read with torch.load(weights_only=True))"]


def test_eval_checks_the_model_headers_first(cli, workdir, bad):
    _truncate(drop=100)(bad)
    result = invoke(cli, "eval", bad, "--tasks", "imdb", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"Error: {bad / SHARD}: tensor 'roberta.encoder.layer.1.output.dense.weight' lies past the "
        "end of the file (truncated: 100 bytes missing)"]
    assert not (bad / "results.json").exists()
