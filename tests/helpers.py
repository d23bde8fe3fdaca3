"""Helpers for tests: write a recipe, merge it, read the result."""

from __future__ import annotations

from pathlib import Path

from prefkit.executor import execute
from prefkit.plan import resolve
from prefkit.recipe import load_recipe


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
    execute(plan, force=True, **kw)
    return load_tensors(folder / output)
