"""`prefkit validate` / `prefkit plan` of a sweep recipe: the checks are the library's
(`prefkit.batch.check_recipe`); `plan` shows one merge, so it refuses a sweep."""

from __future__ import annotations

from prefkit.batch import check_recipe
from prefkit.sweeps import is_sweep

__all__ = ["check_recipe", "reject_sweep"]


def reject_sweep(loaded, command: str) -> None:
    """`prefkit plan` shows one merge; a sweep has one per point."""
    if is_sweep(loaded):
        raise loaded.error((), f"{command} takes one merge, and this recipe is a sweep",
                           "run `prefkit run` on it, then `prefkit plan` on one of its "
                           "<output>/points/*/recipe.yaml")
