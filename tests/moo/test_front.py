"""Front metrics: hypervolume against hand-computed values and an independent inclusion-exclusion
computation, the non-dominated set, preference alignment against its formula."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefkit.moo import hypervolume, non_dominated, preference_alignment


def hv_inclusion_exclusion(points, reference) -> float:
    """Exact hypervolume (maximisation) by inclusion-exclusion over the boxes [reference, point]:
    the intersection of boxes is the box up to the element-wise minimum."""
    boxes = [np.maximum(np.asarray(p, float) - reference, 0.0) + reference for p in points]
    total = 0.0
    for size in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, size):
            corner = np.min(subset, axis=0)
            total += (-1) ** (size + 1) * float(np.prod(corner - reference))
    return total


@pytest.mark.parametrize(("points", "reference", "expected"), [
    ([[1, 2], [2, 1]], [0, 0], 3.0),                  # two boxes of 2 overlapping in 1
    ([[1, 2], [2, 1], [0.5, 0.5]], [0, 0], 3.0),      # a dominated point adds nothing
    ([[1, 2], [-1, 5]], [0, 0], 2.0),                 # a point below the reference adds nothing
    ([[0.9, 0.6]], [0.5, 0.5], 0.4 * 0.1),
    ([[2, 1, 1], [1, 2, 1], [1, 1, 2]], [0, 0, 0], 4.0),   # 3 x 2 - 3 x 1 + 1
    ([[1, 1, 1, 1]], 0.5, 0.5**4),                    # one value for every task
    ([], [0, 0], 0.0),
])
def test_hypervolume_by_hand(points, reference, expected):
    assert hypervolume(points, reference) == pytest.approx(expected, abs=1e-12)


def test_hypervolume_minimisation_and_tensors():
    # losses: boxes [1,3]x[2,3] and [2,3]x[1,3], overlap [2,3]x[2,3]
    assert hypervolume([[1, 2], [2, 1]], [3, 3], maximize=False) == pytest.approx(3.0)
    points = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float32)
    assert hypervolume(points, torch.zeros(2)) == pytest.approx(3.0)


@settings(max_examples=60, deadline=2000)
@given(st.integers(2, 4).flatmap(lambda m: st.lists(
    st.lists(st.floats(0, 1, allow_nan=False).map(lambda x: round(x, 3)), min_size=m, max_size=m),
    min_size=1, max_size=6)))
def test_hypervolume_matches_inclusion_exclusion(points):
    reference = np.full(len(points[0]), 0.1)
    assert hypervolume(points, reference) == pytest.approx(
        hv_inclusion_exclusion(points, reference), abs=1e-9)


def test_hypervolume_errors():
    with pytest.raises(ValueError, match="n x m"):
        hypervolume([1.0, 2.0], [0, 0])
    with pytest.raises(ValueError, match="finite"):
        hypervolume([[1.0, float("nan")]], [0, 0])
    with pytest.raises(ValueError, match="2 finite values"):
        hypervolume([[1.0, 2.0]], [0, 0, 0])


def test_non_dominated():
    points = [[1, 2], [2, 1], [0.5, 0.5], [1, 2], [2, 0.5]]
    assert non_dominated(points).tolist() == [True, True, False, False, False]
    assert non_dominated(points, maximize=False).tolist() == [False, False, True, False, False]
    assert non_dominated(np.zeros((0, 2))).tolist() == []


def test_alignment_on_the_ray_is_perfect():
    scores = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    out = preference_alignment(scores, scores)
    assert out["cosine"] == pytest.approx([1.0, 1.0, 1.0])
    assert out["non_uniformity"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_alignment_formula():
    out = preference_alignment([[0.8, 0.2]], [[1, 1]], nadir=[0, 0], ideal=[1, 1])
    u, p = np.array([0.8, 0.2]), np.array([0.5, 0.5])
    assert out["cosine"][0] == pytest.approx(u @ p / (np.linalg.norm(u) * np.linalg.norm(p)))
    # losses 1 - u = (0.2, 0.8); p * L normalised = (0.2, 0.8); KL to uniform
    expected = 0.2 * math.log(2 * 0.2) + 0.8 * math.log(2 * 0.8)
    assert out["non_uniformity"][0] == pytest.approx(expected)


def test_alignment_normalises_each_task_by_its_range():
    # task 2 spans 0.4..0.6, task 1 spans 0..1: the second point's gains are (0, 1), on its ray
    out = preference_alignment([[1.0, 0.4], [0.0, 0.6]], [[1, 0], [0, 1]])
    assert out["cosine"] == pytest.approx([1.0, 1.0])
    # a point at the nadir gained nothing: no direction
    out = preference_alignment([[0.0, 0.4], [1.0, 0.6]], [[1, 1], [1, 1]])
    assert math.isnan(out["cosine"][0]) and out["cosine"][1] == pytest.approx(1.0)


def test_alignment_errors():
    with pytest.raises(ValueError, match="same shape"):
        preference_alignment([[1, 2]], [[1, 2, 3]])
    with pytest.raises(ValueError, match="non-negative"):
        preference_alignment([[1, 2]], [[1, -2]])
