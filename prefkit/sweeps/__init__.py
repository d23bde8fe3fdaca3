"""Preference sweeps: one recipe with `preferences:` (and optionally several `methods:`) runs every
(method, preference) point as an ordinary recipe, caches each by content hash, scores it, and
reports the fronts (hypervolume, alignment, plots).

Modules: `grid` (preference grids), `points` (expansion, checks, cache keys), `store` (the
output folder and results.jsonl), `point` (one point, in any process), `executors` (in-process,
process pool, Ray), `run` (the sweep), `results` (scored points from results.jsonl), `report` and
`plots` (from them alone), `tracking` (W&B), `logs` (log format). The recipe keys of a sweep are
`prefkit.recipe.sweep_keys`. Heavy imports stay inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SweepOptions:
    """How `prefkit run` runs a sweep's points (command-line options, not recipe keys)."""

    executor: Literal["local", "ray"] = "local"
    workers: int | None = None  # None: 1 (local) or one per point the cluster can run at once
    evaluate_only: bool = False  # re-score stored models, never merge
    log_level: str | None = None  # None: the recipe's logging: (or info)
    log_format: str | None = None
    log_file: str | None = None

    @property
    def is_default(self) -> bool:
        return self == SweepOptions(log_level=self.log_level, log_format=self.log_format,
                                    log_file=self.log_file)


def is_sweep(loaded) -> bool:
    """A recipe with `preferences:`, `methods:` or `seeds:` is a sweep."""
    recipe = loaded.recipe
    return recipe.preferences is not None or recipe.methods is not None or recipe.seeds is not None


__all__ = ["SweepOptions", "is_sweep"]
