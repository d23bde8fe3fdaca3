"""`prefkit eval`: the library scores the folder (`prefkit.eval.run.score_folder`) and prints its
table on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def evaluate_and_report(model_dir: Path, names, registry, settings, *, heads=None,
                        extra_tasks=None, quiet=False) -> dict[str, Any]:
    from prefkit.eval.run import score_folder

    return score_folder(model_dir, names, registry, settings, heads=heads,
                        extra_tasks=extra_tasks, quiet=quiet)
