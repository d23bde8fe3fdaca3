"""Build the offline checkpoint zoo the recipes in this folder merge.

    python recipes/offline/make_zoo.py [DEST]      # default: recipes/offline/zoo

A seeded RoBERTa-shaped base (no classifier, like roberta-base) and four "fine-tuned" models with
the reference tasks' head sizes (ag_news 4, imdb 2, mnli 3, mrpc 2), as sharded safetensors. The
models are the base plus seeded noise: they exercise the merge machinery, not accuracy (the
evaluation demo trains real ones).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefkit.testing import REFERENCE_TASKS, make_zoo


def main() -> None:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "zoo"
    paths = make_zoo(dest, tasks=REFERENCE_TASKS, seed=0, shards=2, layers=4, hidden=64,
                     intermediate=256, vocab=1000, positions=130)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
