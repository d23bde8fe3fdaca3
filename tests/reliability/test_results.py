"""Results are checked: a merge that turns finite inputs into NaN/Inf (a weight or lambda whose
product overflows the dtype, whatever bounds the recipe schema sets) fails with one line naming
the tensor and the numbers that scale it, exit 1, nothing written. With --allow-nonfinite, a
tensor whose inputs hold NaN/Inf merges as before; the others are still checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tests.helpers import write_recipe
from tests.reliability.conftest import invoke

BIG = "roberta.encoder.layer.0.attention.self.query.weight"  # (16, 16): 256 values
NAN = "roberta.encoder.layer.0.attention.self.key.weight"
SHARD = "model-00001-of-00002.safetensors"  # holds both

LINEAR = """\
merge_method: linear
models:
  - model: big/ag_news
    parameters: {weight: 1.0e6}
  - model: big/imdb
    parameters: {weight: 1.0e6}
"""
TASK_ARITHMETIC = """\
merge_method: task_arithmetic
base_model: big/base
models:
  - model: big/ag_news
  - model: big/imdb
parameters: {lambda: 1.0e6}
preference: [0.5, 0.5]
"""


def _set(folder: Path, values: dict[str, np.ndarray]) -> None:
    file = folder / SHARD
    with safe_open(str(file), "np") as handle:
        metadata = handle.metadata()
    tensors = load_file(file)
    tensors.update(values)
    save_file(tensors, str(file), metadata=metadata)


@pytest.fixture
def big(workdir, copy_zoo) -> Path:
    """The zoo with `BIG` in ag_news and imdb at 1e38 everywhere: finite, but any product with
    a factor above ~3.4 overflows float32 (and bfloat16)."""
    zoo = copy_zoo()
    (workdir / "big").symlink_to(zoo)
    for model in ("ag_news", "imdb"):
        _set(zoo / model, {BIG: np.full((16, 16), 1e38, np.float32)})
    return zoo


def _nothing_written(workdir: Path) -> bool:
    return not (workdir / "out").exists() and not [
        p for p in workdir.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize(("recipe", "scaling"), [
    (LINEAR, "(weight [1e+06, 1e+06]): lower weight"),
    (LINEAR + "dtype: bfloat16\n", "(weight [1e+06, 1e+06]): lower weight"),  # torch's path
    (TASK_ARITHMETIC, "(preference [0.5, 0.5], weight [1, 1], lambda 1e+06): lower weight / lambda"),
], ids=["linear-weights", "linear-weights-bfloat16", "task-arithmetic-lambda"])
def test_an_overflowing_merge_fails_and_writes_nothing(cli, workdir, big, recipe, scaling):
    write_recipe(workdir, recipe)
    result = invoke(cli, "run", "recipe.yaml", "-o", "out", "-q")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"Error: tensor {BIG!r}: the merge gave 256 non-finite value(s) from finite inputs "
        f"{scaling}; nothing was written")
    assert json.loads(result.stdout)["status"] == "failed"
    assert _nothing_written(workdir)


def test_nonfinite_inputs_with_allow_nonfinite_still_merge(cli, workdir, copy_zoo):
    zoo = copy_zoo()
    (workdir / "big").symlink_to(zoo)
    key = load_file(zoo / "ag_news" / SHARD)[NAN]
    key[0, 0] = np.nan
    _set(zoo / "ag_news", {NAN: key})
    write_recipe(workdir, LINEAR.replace("1.0e6", "1.0"))
    refused = invoke(cli, "run", "recipe.yaml", "-o", "out", "-q")
    assert refused.exit_code == 1 and "holds 1 NaN/Inf value(s)" in refused.stderr
    assert _nothing_written(workdir)
    result = invoke(cli, "run", "recipe.yaml", "-o", "out", "-q", "--allow-nonfinite")
    assert result.exit_code == 0, result.stderr
    merged = load_file(workdir / "out" / "model.safetensors")[NAN]
    assert np.isnan(merged[0, 0]) and np.isfinite(np.delete(merged.ravel(), 0)).all()


def test_allow_nonfinite_still_checks_tensors_with_finite_inputs(cli, workdir, big):
    key = load_file(big / "ag_news" / SHARD)[NAN]
    key[0, 0] = np.inf
    _set(big / "ag_news", {NAN: key})
    write_recipe(workdir, LINEAR)
    result = invoke(cli, "run", "recipe.yaml", "-o", "out", "-q", "--allow-nonfinite")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"Error: tensor {BIG!r}: the merge gave 256 non-finite value(s) from finite inputs "
        "(weight [1e+06, 1e+06]): lower weight; nothing was written")
    assert _nothing_written(workdir)
