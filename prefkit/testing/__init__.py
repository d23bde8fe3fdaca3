"""Test helpers shipped with prefkit: tiny seeded checkpoints for method and CLI tests."""

from prefkit.testing.checkpoints import (
    REFERENCE_TASKS,
    make_base,
    make_finetuned,
    make_zoo,
    tiny_config,
)

__all__ = ["REFERENCE_TASKS", "make_base", "make_finetuned", "make_zoo", "tiny_config"]
