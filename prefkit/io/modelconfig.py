"""The values of a checkpoint's `config.json` that prefkit interprets, checked before use.

`config.json` is read as bounded JSON (`prefkit.io.jsonfile`); the keys a merge acts on are
checked here: the label count of a classification head (`id2label`, `num_labels`), which sizes
padded heads and the output's label maps, and `model_type`, which names a bare encoder's prefix.
Each problem is one CheckpointFileError naming the file and the key. The layer count
(`num_hidden_layers`, `n_layer`, `num_layers`) is only compared with the tensor names, which give
the count gradients use (`prefkit.recipe.tensors`); a value that is not a count is reported as
ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefkit.io.damage import CheckpointFileError

MAX_LABELS = 1_000_000  # classes of one head (ImageNet-21k has 21,843)
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_INDEX = re.compile(r"[0-9]{1,7}")
_FIX = "fix {key} in config.json or restore the file from the model's source"


def config_problems(folder: Path, config: dict[str, Any] | None) -> list[CheckpointFileError]:
    """What is wrong with the keys prefkit interprets in a folder's config.json (empty: nothing)."""
    if not config:
        return []
    file = folder / "config.json"
    found = [_id2label_problem(config.get("id2label")), _num_labels_problem(config.get("num_labels"))]
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        found.append(("model_type", f"is {_short(model_type)}, not a name"))
    return [CheckpointFileError(f"{file}: {key} {why}", hint=_FIX.format(key=key))
            for key, why in filter(None, found)]


def _id2label_problem(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "id2label", f"is {_short(value)}, not a mapping of class indices to names"
    if len(value) > MAX_LABELS:
        return "id2label", f"has {len(value)} entries (at most {MAX_LABELS:,} are allowed)"
    for key, name in value.items():
        if not _INDEX.fullmatch(key) or int(key) >= MAX_LABELS:
            return "id2label", (f"has key {_short(key)}, which is not a class index (0 to "
                                f"{MAX_LABELS - 1})")
        if not isinstance(name, str):
            return "id2label", f"maps {key!r} to {_short(name)}, which is not a class name"
    return None


def _num_labels_problem(value: Any) -> tuple[str, str] | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)
                         and 1 <= value <= MAX_LABELS):
        return None
    return "num_labels", f"is {_short(value)}, not a whole number from 1 to {MAX_LABELS:,}"


def num_labels(config: dict[str, Any] | None) -> int | None:
    """A checked config's label count: id2label's size, else num_labels (None: no head)."""
    if not config:
        return None
    if isinstance(config.get("id2label"), dict):
        return len(config["id2label"])
    return config.get("num_labels")


def config_layers(config: dict[str, Any] | None) -> tuple[str, Any] | None:
    """The first layer-count key config.json gives, and its value as written."""
    for key in LAYER_KEYS:
        if (config or {}).get(key) is not None:
            return key, config[key]
    return None


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
