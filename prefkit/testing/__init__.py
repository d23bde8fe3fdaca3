"""Test helpers shipped with prefkit, for its own tests and for plugin authors.

- tiny seeded checkpoints: `tiny_config`, `make_base`, `make_finetuned`, `make_zoo`
- `check_method_contract(method)`: what every tensor method must satisfy
- pytest fixtures (`prefkit_zoo`, `prefkit_registry`, `prefkit_merge`, `prefkit_cli`), loaded
  automatically through the `pytest11` entry point (`prefkit.testing.pytest_plugin`)

Names are imported on first use, so that pytest loading the fixtures does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "REFERENCE_TASKS": "prefkit.testing.checkpoints",
    "make_base": "prefkit.testing.checkpoints",
    "make_finetuned": "prefkit.testing.checkpoints",
    "make_zoo": "prefkit.testing.checkpoints",
    "tiny_config": "prefkit.testing.checkpoints",
    "check_method_contract": "prefkit.testing.contract",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prefkit.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
