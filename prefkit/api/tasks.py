"""A labelled text-classification task, for evaluation, training and AdaMerging."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Task:
    """A labelled text-classification task, for evaluation, training and AdaMerging.

    Attributes:
        name: the name recipes and `--tasks` use (snake_case).
        dataset: a `datasets.load_dataset` path: a hub id (``SetFit/mnli``) or a builder for
            local files (``csv``, ``json``, ``parquet``) together with `data_files`.
        text_fields: one field (single text) or two (a sentence pair), in model input order.
        label_names: the task's labels in the dataset's label order (label i = label_names[i]).
        label_field: the column with integer labels.
        splits: split roles (``train``, ``validation``, ``test``) → the dataset's split names.
        data_files: for local builders: split name → file(s).
        config_name: the dataset configuration, if any.
        loader: instead of `datasets.load_dataset`, a function split name → `datasets.Dataset`
            (for data that packages ship in their own formats).
        metrics: metric names reported by evaluation.
        summary: one line for `prefkit tasks`.
        source: where the data come from and their licence.
        known_label_orders: documented output orders of known models (hub id → label names in
            the model's output order), for models whose config only says LABEL_0..k.
    """

    name: str
    dataset: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    label_field: str = "label"
    splits: dict[str, str] = field(default_factory=lambda: {
        "train": "train", "validation": "validation", "test": "test"})
    data_files: dict[str, Any] | None = None
    config_name: str | None = None
    loader: Callable[[str], Any] | None = None
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    summary: str = ""
    source: str = ""
    known_label_orders: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
