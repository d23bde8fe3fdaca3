"""Damaged, lying, hostile and unsafe checkpoints, built here from the tiny zoo (no binaries
committed).

Every case runs `prefkit run` on a recipe whose second model is the damaged copy and expects one
error line, exactly: it names the file (and the tensor or key), says what to do, and comes with
its exit code, no traceback and nothing in or next to the output location.

Exit codes: what config.json's keys, the tensor names and the memory budget are checked for is
found while planning the tensors and exits 1 (merge failed). What the headers, the index and the
JSON files are checked for is found when the resolver opens the models (`Checkpoint.open`), and the
resolver (prefkit/recipe/resolve.py `_located`) reports them at the recipe line that names the
model; they are CheckpointFileErrors, so that line exits 1 too (the recipe is not at fault).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prefkit.engine.executor import execute
from prefkit.errors import CheckpointError
from prefkit.io.dtypes import SAFETENSORS_DTYPES
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
OPENED = 1  # located at the recipe's line, but a damaged checkpoint: see the module docstring
DAMAGED = "(the checkpoint is damaged: download or copy it again)"
REWRITE = "(the index is damaged: download or copy the checkpoint again)"
DTYPES = f"(supported: {', '.join(sorted(SAFETENSORS_DTYPES))})"


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


def raw_header(blob: bytes) -> Callable[[Path], None]:
    return lambda folder: write_st(folder / SHARD, blob, read_st(folder / SHARD)[1])


def _set(entry: str, key: str, value) -> Callable[[dict], None]:
    return lambda h: h[entry].__setitem__(key, value)


def _rename(old: str, new: str) -> Callable[[dict], None]:
    return lambda h: h.__setitem__(new, h.pop(old))


def _truncate(keep: int | None = None, drop: int = 0) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        raw = (folder / SHARD).read_bytes()
        (folder / SHARD).write_bytes(raw[:keep] if keep is not None else raw[:-drop])
    return damage


def _swap_offsets(h: dict) -> None:
    h["classifier.out_proj.bias"]["data_offsets"] = [0, 8]  # overlaps classifier.dense.bias


def _index(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        index = json.loads((folder / INDEX).read_text())
        index = edit(index) or index
        (folder / INDEX).write_text(json.dumps(index))
    return damage


def _shard(shard: str) -> Callable[[dict], None]:
    return lambda i: i["weight_map"].__setitem__(FIRST, shard)


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _replace(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)
    return damage


def _sparse(name: str, size: int) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        with open(folder / name, "r+b") as fh:
            fh.truncate(size)
    return damage


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


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


def _entry(key: str, value) -> str:
    return f"corrupt header entry ({key} {value} is not " + (
        "a list of at most 16 non-negative integers up to 2**62)" if key == "shape" else
        "[begin, end])")


# Found when the models are opened: (id, damage, the text after "Error: <recipe>:5:5:
# models[1].model: "; {shard}, {index}, {config}, {bad} are paths)
OPEN_CASES = [
    ("no_header", _truncate(keep=5), f"{{shard}}: truncated safetensors file (no header) {DAMAGED}"),
    ("header_cut_short", _truncate(keep=100),
     f"{{shard}}: truncated safetensors file (header cut short) {DAMAGED}"),
    ("data_truncated", _truncate(drop=100),
     "{shard}: tensor 'roberta.encoder.layer.1.output.dense.weight' lies past the end of the file "
     f"(truncated: 100 bytes missing) {DAMAGED}"),
    ("trailing_bytes", lambda f: (f / SHARD).write_bytes((f / SHARD).read_bytes() + b"\0" * 12),
     "{shard}: 12 unexpected bytes after the last tensor (corrupt, or not written by a safetensors "
     f"writer) {DAMAGED}"),
    ("header_not_json", raw_header(b"{not json"),
     "{shard}: safetensors header is not valid JSON (Expecting property name enclosed in double "
     f"quotes: line 1 column 2 (char 1)) {DAMAGED}"),
    ("header_not_utf8", raw_header(b'{"\xff": 1}'),
     "{shard}: safetensors header is not valid JSON ('utf-8' codec can't decode byte 0xff in "
     f"position 2: invalid start byte) {DAMAGED}"),
    ("header_nested_deep", raw_header(b'{"__metadata__": ' + _deep(100_000).encode() + b"}"),
     f"{{shard}}: safetensors header is nested more than 64 levels deep {DAMAGED}"),
    ("header_a_list", edit_header(lambda h: ["tensor"]),
     f"{{shard}}: corrupt safetensors header (not a JSON object) {DAMAGED}"),
    ("header_length_absurd", lambda f: (f / SHARD).write_bytes(
        struct.pack("<Q", 2**40) + (f / SHARD).read_bytes()[8:]),
     "{shard}: safetensors header of 1099511627776 bytes is not plausible (at most 100.0 MiB) "
     "(the file is not safetensors or is corrupt)"),
    ("metadata_not_strings", edit_header(lambda h: h.__setitem__("__metadata__", {"format": 1})),
     f"{{shard}}: corrupt safetensors header (__metadata__ must map strings to strings) {DAMAGED}"),
    ("lying_shape", edit_header(_set(FIRST, "shape", [17])),
     "{shard}: tensor 'classifier.dense.bias': corrupt header entry (64 bytes for a float32 tensor "
     f"of shape [17], which needs 68) {DAMAGED}"),
    ("lying_dtype", edit_header(_set(FIRST, "dtype", "F64")),
     "{shard}: tensor 'classifier.dense.bias': corrupt header entry (64 bytes for a float64 tensor "
     f"of shape [16], which needs 128) {DAMAGED}"),
    ("overlapping_offsets", edit_header(_swap_offsets),
     "{shard}: tensor 'classifier.dense.bias': corrupt header (its bytes overlap tensor "
     f"'classifier.out_proj.bias') {DAMAGED}"),
    ("gap_before_tensor", edit_header(_set(FIRST, "data_offsets", [8, 72])),
     f"{{shard}}: tensor 'classifier.dense.bias': corrupt header (8 unused bytes before it) {DAMAGED}"),
    ("offsets_not_numbers", edit_header(_set(FIRST, "data_offsets", ["0", "64"])),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('data_offsets', ['0', '64'])} {DAMAGED}"),
    ("offsets_reversed", edit_header(_set(FIRST, "data_offsets", [64, 0])),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('data_offsets', [64, 0])} {DAMAGED}"),
    ("negative_shape", edit_header(_set(FIRST, "shape", [-16])),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('shape', [-16])} {DAMAGED}"),
    ("shape_of_floats", edit_header(_set(FIRST, "shape", [16.0])),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('shape', [16.0])} {DAMAGED}"),
    ("shape_of_bools", edit_header(_set(FIRST, "shape", [True] * 2)),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('shape', [True] * 2)} {DAMAGED}"),
    ("shape_huge_extent", edit_header(_set(FIRST, "shape", [2**63, 0])),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('shape', [2**63, 0])} {DAMAGED}"),
    ("shape_too_many_dims", edit_header(_set(FIRST, "shape", [1] * 17)),
     f"{{shard}}: tensor 'classifier.dense.bias': {_entry('shape', [1] * 17)} {DAMAGED}"),
    ("unknown_dtype", edit_header(_set(FIRST, "dtype", "C64")),
     f"{{shard}}: tensor 'classifier.dense.bias' has unsupported dtype 'C64' {DTYPES}"),
    ("dtype_a_list", edit_header(_set(FIRST, "dtype", ["F32"])),
     f"{{shard}}: tensor 'classifier.dense.bias' has unsupported dtype ['F32'] {DTYPES}"),
    ("name_with_newline", edit_header(_rename(FIRST, FIRST + "\n")),
     f"{{shard}}: tensor name 'classifier.dense.bias\\n' holds control or unencodable characters "
     f"{DAMAGED}"),
    ("name_lone_surrogate", edit_header(_rename(FIRST, "\ud800")),
     f"{{shard}}: tensor name '\\ud800' holds control or unencodable characters {DAMAGED}"),
    ("name_empty", edit_header(_rename(FIRST, "")),
     f"{{shard}}: tensor name '' is empty (1 to 1024 are allowed) {DAMAGED}"),
    ("shard_symlink_loop", _replace(SHARD, lambda p: os.symlink(p.name, p)),
     "{shard}: cannot open: it is a symlink loop (point the link at a real file)"),
    ("shard_a_fifo", _replace(SHARD, os.mkfifo),
     "{shard}: is not a regular file (a checkpoint's weights, index and config are regular files)"),
    ("shard_a_folder", _replace(SHARD, Path.mkdir),
     "{shard}: is a folder (a checkpoint's weights, index and config are regular files)"),
    ("index_names_missing_shard", _index(_shard("model-00003-of-00003.safetensors")),
     "{index}: lists shard(s) that do not exist: model-00003-of-00003.safetensors (download or "
     "copy the missing shards)"),
    ("index_names_wrong_shard", _index(_shard("model-00002-of-00002.safetensors")),
     "{index}: tensor 'classifier.dense.bias' is listed in model-00002-of-00002.safetensors, "
     "which does not hold it (the index and shards do not match)"),
    ("index_escapes_folder", _index(_shard("../ag_news/" + SHARD)),
     "{index}: tensor 'classifier.dense.bias' names shard "
     "'../ag_news/model-00001-of-00002.safetensors', which is not a .safetensors file in the "
     f"checkpoint folder {REWRITE}"),
    ("index_absolute_shard", _index(_shard("/etc/model.safetensors")),
     "{index}: tensor 'classifier.dense.bias' names shard '/etc/model.safetensors', which is not "
     f"a .safetensors file in the checkpoint folder {REWRITE}"),
    ("index_nul_in_shard", _index(_shard("model\x00.safetensors")),
     "{index}: tensor 'classifier.dense.bias' names shard 'model\\x00.safetensors', which is not "
     f"a .safetensors file in the checkpoint folder {REWRITE}"),
    ("index_shard_not_text", _index(_shard(7)),
     "{index}: not a valid safetensors index (weight_map must map tensor names to shard file "
     f"names) {REWRITE}"),
    ("index_weight_map_a_list", _index(lambda i: {"weight_map": []}),
     "{index}: not a valid safetensors index (weight_map must map tensor names to shard file "
     f"names) {REWRITE}"),
    ("index_a_list", _index(lambda i: [i]),
     "{index}: not a valid safetensors index (weight_map must map tensor names to shard file "
     f"names) {REWRITE}"),
    ("index_tensor_name_tab", _index(lambda i: i["weight_map"].__setitem__("a\tb", SHARD)),
     f"{{index}}: tensor name 'a\\tb' holds control or unencodable characters {DAMAGED}"),
    ("index_not_json", _write(INDEX, "{"),
     "{index}: safetensors index is not valid JSON (Expecting property name enclosed in double "
     "quotes: line 1 column 2 (char 1)) (the safetensors index is damaged: restore it from the "
     "model's source)"),
    ("index_nested_deep", _write(INDEX, '{"weight_map": ' + _deep(100_000) + "}"),
     "{index}: safetensors index is nested more than 64 levels deep (the safetensors index is "
     "damaged: restore it from the model's source)"),
    ("index_too_large", _sparse(INDEX, 64 * 2**20 + 1),
     "{index}: safetensors index is 67,108,865 bytes, more than the 64.0 MiB allowed (the "
     "safetensors index is damaged or not what it claims to be)"),
    ("index_symlink_loop", _replace(INDEX, lambda p: os.symlink(p.name, p)),
     "{index}: cannot open: it is a symlink loop (point the link at a real file)"),
    ("shard_tensor_not_in_index", _extra_tensor,
     "{shard}: tensor 'stowaway.weight' is not listed in model.safetensors.index.json (the index "
     "and shards do not match)"),
    ("config_not_json", _write("config.json", "{'a': 1}"),
     "{config}: config.json is not valid JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1)) (the config.json is damaged: restore it from the model's source)"),
    ("config_nested_deep", _write("config.json", '{"a": ' + _deep(100_000) + "}"),
     "{config}: config.json is nested more than 64 levels deep (the config.json is damaged: "
     "restore it from the model's source)"),
    ("config_a_list", _write("config.json", "[1, 2]"),
     "{config}: expected a JSON object (restore config.json from the model's source)"),
    ("config_too_large", _sparse("config.json", 16 * 2**20 + 1),
     "{config}: config.json is 16,777,217 bytes, more than the 16.0 MiB allowed (the config.json "
     "is damaged or not what it claims to be)"),
    ("config_symlink_loop", _replace("config.json", lambda p: os.symlink(p.name, p)),
     "{config}: cannot open: it is a symlink loop (point the link at a real file)"),
]


def _config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return damage


def _labels(value) -> Callable[[dict], None]:
    return lambda c: (c.pop("id2label"), c.__setitem__("num_labels", value))


def _fix(key: str) -> str:
    return f"(fix {key} in config.json or restore the file from the model's source)"


NUM_LABELS = "not a whole number from 1 to 1,000,000 " + _fix("num_labels")
CLASS_INDEX = "which is not a class index (0 to 999999) " + _fix("id2label")

# Found while planning the tensors (exit 1): (id, damage, the text after "Error: ")
PLAN_CASES = [
    ("id2label_keys_not_integers", _config(lambda c: c.__setitem__("id2label", {"a": "x", "b": "y"})),
     f"{{config}}: id2label has key 'a', {CLASS_INDEX}"),
    ("id2label_key_negative", _config(lambda c: c.__setitem__("id2label", {"-1": "x", "0": "y"})),
     f"{{config}}: id2label has key '-1', {CLASS_INDEX}"),
    ("id2label_key_huge", _config(lambda c: c.__setitem__("id2label", {"0": "x", "10000000": "y"})),
     f"{{config}}: id2label has key '10000000', {CLASS_INDEX}"),
    ("id2label_names_not_text", _config(lambda c: c.__setitem__("id2label", {"0": 1, "1": [2]})),
     f"{{config}}: id2label maps '0' to 1, which is not a class name {_fix('id2label')}"),
    ("id2label_a_list", _config(lambda c: c.__setitem__("id2label", ["x", "y"])),
     "{config}: id2label is ['x', 'y'], not a mapping of class indices to names "
     f"{_fix('id2label')}"),
    ("num_labels_text", _config(_labels("2")), f"{{config}}: num_labels is '2', {NUM_LABELS}"),
    ("num_labels_negative", _config(_labels(-3)), f"{{config}}: num_labels is -3, {NUM_LABELS}"),
    ("num_labels_zero", _config(_labels(0)), f"{{config}}: num_labels is 0, {NUM_LABELS}"),
    ("num_labels_huge", _config(_labels(10**12)),
     f"{{config}}: num_labels is 1000000000000, {NUM_LABELS}"),
    ("num_labels_bool", _config(_labels(True)), f"{{config}}: num_labels is True, {NUM_LABELS}"),
    ("num_labels_float", _config(_labels(2.5)), f"{{config}}: num_labels is 2.5, {NUM_LABELS}"),
    ("model_type_a_list", _config(lambda c: c.__setitem__("model_type", ["roberta"])),
     f"{{config}}: model_type is ['roberta'], not a name {_fix('model_type')}"),
    ("float_and_int_dtypes", _retype,
     "{bad}/model-00001-of-00002.safetensors: tensor "
     "'roberta.encoder.layer.0.attention.self.query.weight' is int64 here but float32 in "
     "zoo/ag_news (the checkpoints do not share one architecture)"),
]


@pytest.fixture
def bad(workdir) -> Path:
    """A private copy of zoo/imdb at `bad/`, for the test to damage."""
    folder = workdir / "bad"
    shutil.copytree(workdir / "zoo" / "imdb", folder)
    return folder


def nothing_left(workdir: Path, out: str = "out") -> None:
    assert not (workdir / out).exists()
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(f".{out}")]


def run_fails(cli, workdir, code: int, expected: str, *extra, recipe: str = RECIPE) -> str:
    """Runs the recipe; exactly one line, `Error: <expected>`, with exit `code`, and no output."""
    path = write_recipe(workdir, recipe)
    result = invoke(cli, "run", path, "-o", workdir / "out", "-q", *extra)
    lines = result.stderr.splitlines()
    assert result.exit_code == code, result.stderr
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr
    assert lines == [f"Error: {expected}"]
    nothing_left(workdir)
    return lines[0]


def _paths(bad: Path) -> dict[str, Path]:
    return {"shard": bad / SHARD, "index": bad / INDEX, "config": bad / "config.json", "bad": bad}


@pytest.mark.parametrize("damage, expected", [c[1:] for c in OPEN_CASES],
                         ids=[c[0] for c in OPEN_CASES])
def test_damaged_files_are_one_clear_error(cli, workdir, bad, damage, expected):
    damage(bad)
    located = f"{workdir / 'recipe.yaml'}:5:5: models[1].model: "
    run_fails(cli, workdir, OPENED, located + expected.format(**_paths(bad)))


@pytest.mark.parametrize("damage, expected", [c[1:] for c in PLAN_CASES],
                         ids=[c[0] for c in PLAN_CASES])
def test_bad_config_values_are_one_clear_error(cli, workdir, bad, damage, expected):
    damage(bad)
    run_fails(cli, workdir, 1, expected.format(**_paths(bad)))


def test_damaged_config_of_every_model_is_reported(cli, workdir, bad):
    """Two models whose configs share one bad id2label: each is named (the map is never used)."""
    other = workdir / "bad2"
    shutil.copytree(workdir / "zoo" / "mrpc", other)
    for folder in (bad, other):
        _config(lambda c: c.__setitem__("id2label", {"a": "x", "b": "y"}))(folder)
    path = write_recipe(workdir, RECIPE.replace("zoo/ag_news", "bad2"))
    result = invoke(cli, "run", path, "-o", workdir / "out", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"Error: {folder / 'config.json'}: id2label has key 'a', {CLASS_INDEX}"
        for folder in (other, bad)]
    nothing_left(workdir)


def test_implausible_layer_index_in_a_tensor_name(cli, workdir, bad):
    old, new = "roberta.encoder.layer.1.output.dense.bias", "roberta.encoder.layer.100000.output.dense.bias"
    shard = json.loads((bad / INDEX).read_text())["weight_map"][old]
    header, data = read_st(bad / shard)
    header[new] = header.pop(old)
    write_st(bad / shard, header, data)
    _index(lambda i: i["weight_map"].__setitem__(new, i["weight_map"].pop(old)))(bad)
    run_fails(cli, workdir, 1, f"{bad / shard}: tensor '{new}' has layer index 100000, more than a "
              "model has (at most 99999) (the checkpoint is damaged or lying: restore it from the "
              "model's source)", recipe="merge_method: linear\nmodels:\n  - model: bad\n"
              "parameters: {weight: 1.0}\n")


# --- layer counts: config.json against the tensor names ------------------------------------------

@pytest.fixture(scope="module")
def zoo4(tmp_path_factory) -> Path:
    """Four layers in the tensor names; the base's config.json says two."""
    from prefkit.testing import make_zoo

    root = tmp_path_factory.mktemp("zoo4")
    make_zoo(root, tasks={"a": 2, "b": 2}, layers=4)
    _config(lambda c: c.__setitem__("num_hidden_layers", 2))(root / "base")
    return root


GRADIENT = """\
merge_method: task_arithmetic
base_model: {zoo}/base
models:
  - model: {zoo}/a
  - model: {zoo}/b
parameters: {{weight: [0.0, 1.0]}}
"""


def test_gradients_run_over_the_layers_of_the_tensor_names(cli, zoo4, tmp_path, monkeypatch):
    """config.json's num_hidden_layers (2) disagrees with the names (layers 0-3): the names win,
    so layer 3 gets the gradient's last value (it was an IndexError), and the plan says so."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, GRADIENT.format(zoo=zoo4))
    plan = invoke(cli, "plan", recipe)
    assert plan.exit_code == 0, plan.stderr
    assert (f"note: {zoo4}/base: config.json says num_hidden_layers: 2, but the tensor names have "
            "4 layers (0 to 3): gradients run over 4") in plan.stdout
    result = invoke(cli, "run", recipe, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    out, base, a, b = (load_tensors(p) for p in (tmp_path / "out", zoo4 / "base", zoo4 / "a",
                                                 zoo4 / "b"))
    first, last = (f"roberta.encoder.layer.{i}.output.dense.weight" for i in (0, 3))
    assert torch.equal(out[first], base[first])  # weight 0 at t = 0
    torch.testing.assert_close(out[last], a[last] + b[last] - base[last])  # weight 1 at t = 1


# --- resources: memory budget, file descriptors -----------------------------------------------------

def _sparse_model(folder: Path, shape: tuple[int, ...]) -> None:
    """One float32 tensor of `shape` whose bytes are a hole in the file (no disk used)."""
    folder.mkdir()
    nbytes = 4 * shape[0] * shape[1]
    header = json.dumps({"big.weight": {"dtype": "F32", "shape": list(shape),
                                        "data_offsets": [0, nbytes]}}).encode()
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + nbytes)
    (folder / "config.json").write_text('{"model_type": "toy"}')


def test_a_row_larger_than_the_memory_budget_is_refused_before_reading(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("base", "a", "b"):
        _sparse_model(tmp_path / name, (2, 13_000_000))  # a row of 52 MB in each of 3 inputs
    recipe = ("merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n"
              "  - model: b\nparameters: {weight: 0.5}\n")
    run_fails(cli, tmp_path, 1, "tensor 'big.weight' (float32, shape [2, 13000000]): one row of "
              "its 3 input(s) is 148.8 MiB, more than the memory budget of 48.0 MiB (set "
              "PREFKIT_SLAB_BYTES=156000000 (or more) to merge it in one-row slabs, which needs "
              "about twice that much memory)", recipe=recipe)


ALL = """\
merge_method: task_arithmetic
base_model: zoo/base
models:
  - model: zoo/ag_news
  - model: zoo/imdb
  - model: zoo/mnli
  - model: zoo/mrpc
parameters: {weight: 0.25}
"""


def test_running_out_of_file_descriptors_says_so(cli, workdir):
    """A merge keeps one descriptor per input file (10 here). Run with from 3 too few to 9 more
    than are open now, it fails wherever it runs out (the lock, the scan for interrupted runs'
    leftovers, a reader, the writer), each time with one line saying so and what to do, never a
    traceback or a full disk, and nothing left behind; with the readers' 10 free it merges. (How
    many this process holds differs between machines, so no one limit pins one place: CI once had
    one fewer free than here, and the scan's failure escaped.)"""
    recipe = write_recipe(workdir, ALL)
    warm = invoke(cli, "run", recipe, "-o", workdir / "warm", "-q")  # imports done, caches filled
    assert warm.exit_code == 0, warm.stderr
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reader = None
    for extra in range(-3, 10):
        limit = len(os.listdir("/proc/self/fd")) + extra  # the listing's own one is closed again
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            result = invoke(cli, "run", recipe, "-o", workdir / "out", "-q")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert result.exit_code in (1, 2), (extra, result.stderr, result.exception)
        assert isinstance(result.exception, SystemExit), (extra, result.exception)
        (line,) = result.stderr.splitlines()
        assert re.fullmatch(r"Error: .*too many open files.*\(`ulimit -n 4096`, or higher\).*",
                            line), line
        reader = reader or re.fullmatch(
            r"Error: /\S+/zoo/(base|ag_news|imdb|mnli|mrpc)/model-0000[12]-of-00002\.safetensors: "
            rf"cannot open: too many open files \(this process's limit of {limit} is reached\) "
            r"\(raise the limit of open files in the shell that runs prefkit \(`ulimit -n 4096`, "
            r"or higher\), then run again\)", line)
        nothing_left(workdir)
    assert reader, "no limit ran out in a reader"
    limit = len(os.listdir("/proc/self/fd")) + 10 + 3  # the readers' 10, the writer, the lock
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        assert invoke(cli, "run", recipe, "-o", workdir / "out", "-q").exit_code == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- reading after planning, values, pickles ----------------------------------------------------

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
    run_fails(cli, workdir, 3, f"{workdir / 'recipe.yaml'}:5:5: models[1].model: {workdir / 'bad'}: "
              "holds only pickle weights (pytorch_model.bin) (pickle files can run code when loaded: "
              "convert the model to safetensors, or pass --allow-pickle if you trust it; it is then "
              "read with torch.load(weights_only=True))")
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
        # without --allow-pickle the recipe asks for what is refused (3); with it, unreadable (1)
        assert result.exit_code == (OPENED if extra else 3), result.stderr
        assert "Traceback" not in result.stderr
        assert not marker.exists()
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"Error: {workdir / 'recipe.yaml'}:5:5: models[1].model: ")
    assert line.endswith(" (the file is not a plain state dict of tensors: convert the model to "
                         "safetensors where it was made, or ask its author for safetensors)")
    assert f"{workdir / 'bad' / 'pytorch_model.bin'}: cannot read PyTorch checkpoint (Weights only " \
        "load failed" in line
    nothing_left(workdir)


def test_pickle_that_is_not_a_state_dict(cli, workdir):
    _pickle_model(workdir / "bad", [torch.zeros(2)])
    run_fails(cli, workdir, OPENED, f"{workdir / 'recipe.yaml'}:5:5: models[1].model: "
              f"{workdir / 'bad' / 'pytorch_model.bin'}: not a state dict (tensor name → tensor) "
              "(the file is not a plain state dict of tensors: convert the model to safetensors "
              "where it was made, or ask its author for safetensors)", "--allow-pickle")


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
        f"end of the file (truncated: 100 bytes missing) {DAMAGED}"]
    assert not (bad / "results.json").exists()
