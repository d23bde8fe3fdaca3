"""Which output of a model means which label of a task. Never assumed: taken from the model's
`config.json` label names, a recipe's `labels:`, or a task's documented `known_label_orders`."""

from __future__ import annotations

import re

from prefkit.api import Task
from prefkit.errors import DataError

_GENERIC = re.compile(r"^LABEL_\d+$")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def label_order(task: Task, *, id2label: dict | None, model_id: str | None = None,
                override: list[str] | None = None) -> list[int]:
    """For each model output j, the index of that label in `task.label_names`.

    Raises:
        DataError: the names do not fit the task, or the order cannot be known.
    """
    names = None
    if override:
        names, origin = list(override), "labels:"
    elif id2label and not all(_GENERIC.match(str(v)) for v in id2label.values()):
        names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
        origin = "config.json id2label"
    elif model_id and model_id in task.known_label_orders:
        names, origin = list(task.known_label_orders[model_id]), "documented order"
    if names is None:
        raise DataError(
            f"task {task.name!r}: cannot tell the label order of model {model_id or '?'} "
            "(its config.json names labels LABEL_0..k)",
            hint=f"add labels: {list(task.label_names)} (in the model's output order) to its "
            "models: entry")
    wanted = {_norm(n): i for i, n in enumerate(task.label_names)}
    if len(names) != task.num_labels or {_norm(n) for n in names} != set(wanted):
        raise DataError(f"task {task.name!r}: model {model_id or '?'} has labels {names} "
                        f"({origin}), which do not match the task's {list(task.label_names)}",
                        hint="check the model's task: or give labels: in the recipe")
    return [wanted[_norm(n)] for n in names]
