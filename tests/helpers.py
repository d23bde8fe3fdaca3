"""Helpers for tests: write a recipe, merge it, read the result."""

from __future__ import annotations

from pathlib import Path

from prefkit.engine.executor import ExecuteOptions, execute
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def load_tensors(folder: Path) -> dict:
    import torch  # noqa: F401
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def merge(folder: Path, text: str, registry, *, output: str = "out", **kw) -> dict:
    """Write `text` as a recipe in `folder`, merge it to `folder/output`, return the tensors."""
    recipe = write_recipe(folder, text)
    plan = resolve(load_recipe(recipe), registry, folder / output)
    execute(plan, ExecuteOptions(force=True, **kw))
    return load_tensors(folder / output)


def quantized_zoo(src: Path, dst: Path) -> Path:
    """The zoo with every value rounded to a multiple of 1/64: task vectors then take a handful of
    values, so many entries tie at the TIES cut-off and only some of them are kept."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for file in dst.rglob("*.safetensors"):
        tensors = load_file(str(file))
        save_file({n: torch.round(t * 64) / 64 if t.is_floating_point() else t
                   for n, t in tensors.items()}, str(file))
    return dst
