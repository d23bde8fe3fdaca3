"""Preference grids over the probability simplex."""

from __future__ import annotations

from collections.abc import Iterator


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of `parts` non-negative integers summing to `total`, first entry descending."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def simplex_grid(m: int, steps: int) -> list[list[float]]:
    """All preferences over `m` tasks whose entries are multiples of 1/steps (summing to 1).

    There are C(steps + m - 1, m - 1) of them, corners included: steps=2, m=2 gives
    [1, 0], [0.5, 0.5], [0, 1].
    """
    if m < 1 or steps < 1:
        raise ValueError(f"simplex_grid needs m >= 1 and steps >= 1, got m={m}, steps={steps}")
    return [[k / steps for k in ks] for ks in _compositions(steps, m)]
