"""Loading a task's split through `datasets` (or the task's own loader), with one-line errors."""

from __future__ import annotations

from typing import Any

from prefkit.api import Task
from prefkit.errors import DataError


def load_split(task: Task, role: str) -> Any:
    """The `datasets.Dataset` for a split role (`train`, `validation`, `test`) of a task.

    Raises:
        DataError: unknown split, missing fields, bad labels, or data unavailable (offline).
    """
    split = task.splits.get(role)
    if split is None:
        raise DataError(f"task {task.name!r} has no {role!r} split",
                        hint=f"it has: {', '.join(sorted(task.splits))}")
    try:
        if task.loader is not None:
            dataset = task.loader(split)
        else:
            import datasets

            datasets.logging.set_verbosity_error()
            datasets.disable_progress_bars()
            kwargs = {"data_files": task.data_files} if task.data_files else {}
            dataset = datasets.load_dataset(task.dataset, task.config_name, split=split, **kwargs)
    except DataError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise DataError(
            f"task {task.name!r}: cannot load split {split!r} of dataset {task.dataset!r} "
            f"({type(exc).__name__}{': ' + text if text else ''})",
            hint="offline, the dataset must be in the Hugging Face cache or given as local files",
        ) from exc
    columns = set(dataset.column_names)
    missing = [f for f in (*task.text_fields, task.label_field) if f not in columns]
    if missing:
        raise DataError(f"task {task.name!r}: split {split!r} has no field(s) {', '.join(missing)}",
                        hint=f"its fields: {', '.join(sorted(columns))}")
    return dataset


def subset_indices(n: int, num_samples: int | None, seed: int) -> list[int]:
    """A fixed, seeded subset of range(n) (all of it when num_samples is None or ≥ n), in index
    order: the same for every model evaluated with the same seed, so scores compare."""
    if num_samples is None or num_samples >= n:
        return list(range(n))
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num_samples]
    return sorted(order.tolist())


def examples(task: Task, dataset: Any, indices: list[int]) -> tuple[list[tuple[str, ...]], list[int]]:
    """Texts (one or two fields per example) and integer labels, checked against the task."""
    rows = dataset.select(indices) if len(indices) != len(dataset) else dataset
    texts = list(zip(*(rows[f] for f in task.text_fields)))
    labels = list(rows[task.label_field])
    bad = [x for x in labels if not isinstance(x, int) or not 0 <= x < task.num_labels]
    if bad:
        raise DataError(f"task {task.name!r}: label {bad[0]!r} is not an index into its "
                        f"{task.num_labels} labels {list(task.label_names)}")
    return texts, labels
