"""Fixed train / validation / test splits of packaged data, for the demo's tasks.

Splits are a pure function of the examples: every example gets a key (its text, or its pair of
texts), examples are ordered by a hash of that key (BLAKE2b, ties broken by the key), the first
``n_eval`` are ``test``, the next ``n_eval`` ``validation`` and the rest ``train``, where
``n_eval = min(EVAL_SIZE, len // 10)``. The order in which the examples come does not matter.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefkit.errors import DataError

EVAL_SIZE = 1000  # examples in each of validation and test (at most a tenth of the data)
SPLITS = ("train", "validation", "test")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("the demo tasks need the datasets package",
                        hint="pip install datasets") from None
    return datasets


def hash_key(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


def split_examples(examples: list[tuple[Any, ...]], key_of) -> dict[str, list[tuple[Any, ...]]]:
    """Splits examples by a hash of their key: test, validation, then train (see the module doc)."""
    ordered = sorted(examples, key=lambda ex: (hash_key(key_of(ex)), key_of(ex)))
    n_eval = min(EVAL_SIZE, len(ordered) // 10)
    return {"test": ordered[:n_eval], "validation": ordered[n_eval:2 * n_eval],
            "train": ordered[2 * n_eval:]}


def to_dataset(rows: list[tuple[Any, ...]], fields: tuple[str, ...], label_names: tuple[str, ...]):
    """Rows (the text fields, then the label index) as a `datasets.Dataset` with a ClassLabel."""
    datasets = _datasets()
    features = datasets.Features({**{f: datasets.Value("string") for f in fields},
                                  "label": datasets.ClassLabel(names=list(label_names))})
    columns = {f: [row[i] for row in rows] for i, f in enumerate(fields)}
    columns["label"] = [row[-1] for row in rows]
    return datasets.Dataset.from_dict(columns, features=features)


def check_split(task: str, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"task {task!r} has no split {split!r}", hint=f"it has: {', '.join(SPLITS)}")
