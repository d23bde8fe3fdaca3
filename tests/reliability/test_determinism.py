"""Same recipe + same inputs ⇒ the same bytes, run after run and on 1 or 4 torch threads.

The zoo here is wide enough (128-wide layers, 512-wide MLPs) for torch to split its element-wise
and reduction kernels across threads; the tiny default zoo never would."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from prefkit.engine.executor import ExecuteOptions, execute
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.testing import make_zoo
from tests.reliability.conftest import pinned_registry

MODELS = "models:\n  - model: zoo/a\n  - model: zoo/b\n  - model: zoo/c\n"
RECIPES = {
    "linear_preference": "merge_method: linear\n" + MODELS + "preference: [0.5, 0.3, 0.2]\n",
    "task_arithmetic_bf16": "merge_method: task_arithmetic\nbase_model: zoo/base\n" + MODELS
    + "parameters: {weight: 0.7, lambda: 0.9}\nout_dtype: bfloat16\n",
    "ties_tensor": "merge_method: ties\nbase_model: zoo/base\n" + MODELS
    + "parameters: {density: [0.2, 0.6], consensus: count}\npreference: [0.5, 0.3, 0.2]\n",
    "ties_global": "merge_method: ties\nbase_model: zoo/base\n" + MODELS
    + "parameters: {density: 0.3, trim: global, weight: 1.0}\n",
}


@pytest.fixture(scope="module")
def wide_zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wide")
    make_zoo(root / "zoo", tasks={"a": 3, "b": 5, "c": 2}, base_head=False, hidden=128,
             intermediate=512, vocab=300, positions=64, seed=3)
    return root


def output_bytes(folder: Path) -> dict[str, str]:
    """Hash of every output file; prefkit.json without its timing line."""
    out = {}
    for file in sorted(folder.rglob("*")):
        data = file.read_bytes()
        if file.name == "prefkit.json":
            data = b"\n".join(line for line in data.splitlines() if b"merge_seconds" not in line)
        out[file.name] = hashlib.sha256(data).hexdigest()
    return out


def merge(root: Path, name: str, output: str, threads: int) -> dict[str, str]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        recipe = root / f"{name}.yaml"
        recipe.write_text(RECIPES[name])
        plan = resolve(load_recipe(recipe), pinned_registry(), root / output)
        execute(plan, ExecuteOptions(force=True, max_shard_bytes=400_000))  # several shards
    finally:
        torch.set_num_threads(before)
    return output_bytes(root / output)


@pytest.mark.parametrize("name", RECIPES)
def test_same_bytes_across_runs_and_thread_counts(wide_zoo, name):
    one = merge(wide_zoo, name, f"{name}_1", threads=1)
    four = merge(wide_zoo, name, f"{name}_4", threads=4)
    again = merge(wide_zoo, name, f"{name}_4", threads=4)
    assert len([f for f in one if f.endswith(".safetensors")]) > 1  # sharded
    assert one == four == again
