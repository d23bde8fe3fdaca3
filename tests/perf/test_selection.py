"""The exact k-th largest |δ| (TIES's cut-off), by every path prefkit takes to it, against a sort.

Paths: a direct selection for small tensors; for float32 on the CPU, two radix rounds counted by
the fused C histograms of the TIES plugin (`prefkit.plugins.ties.kernels`); otherwise
(`PREFKIT_KERNELS=torch`, other dtypes, GPUs) one windowed `bincount` pass when a sample predicts
the cut-off (the usual case), and two radix rounds when the sample misleads (the fallback, also
what slabs and `trim: global` stream through). Every test runs on both paths.
"""

from __future__ import annotations

import pytest
import torch
from prefkit.plugins.ties import cut, fused
from prefkit.plugins.ties.selection import MagnitudeSelection

from prefkit import ops


@pytest.fixture(params=["kernels", "torch"])
def path(request, monkeypatch):
    """Run the test with the fused C histograms and with the eager torch path."""
    monkeypatch.setenv("PREFKIT_KERNELS", request.param)
    assert (fused.kernels_for(torch.zeros(1)) is not None) == (request.param == "kernels")
    return request.param


def _reference(delta: torch.Tensor, k: int) -> tuple[float, int, int]:
    mag = delta.abs().reshape(-1).float()
    threshold = float(torch.sort(mag, descending=True).values[k - 1])
    return threshold, int((mag > threshold).sum()), int((mag == threshold).sum())


def _tensors():
    g = torch.Generator().manual_seed(0)
    n = 300_000  # above MagnitudeSelection.SMALL: the windowed pass
    yield "gaussian", torch.randn(n, generator=g) * 1e-3
    yield "quantized (many ties)", torch.round(torch.randn(n, generator=g) * 4) / 64
    yield "heavy tails", torch.randn(n, generator=g) ** 5
    yield "mostly zeros", torch.where(torch.rand(n, generator=g) < 0.9, 0.0, torch.randn(n, generator=g))
    yield "all equal", torch.full((n,), -0.25)
    yield "small (sorted directly)", torch.randn(700, generator=g)
    yield "bfloat16", (torch.randn(n, generator=g) * 1e-2).bfloat16()
    yield "float64", torch.randn(n, generator=g, dtype=torch.float64)
    # every sampled position (a multiple of the stride) is tiny, every other one large: the sample
    # predicts the wrong window and the two-round fallback must answer
    misleading = torch.randn(n, generator=g).abs() + 1
    misleading[:: n // (1 << 16)] = 1e-6
    yield "misleading sample", misleading
    special = torch.randn(n, generator=g)
    special[::7] = -0.0
    special[::11] = float("inf")
    special[::13] = -float("inf")
    special[::17] = 1e-42  # subnormal
    yield "zeros, infinities, subnormals", special


@pytest.mark.parametrize("density", [1e-5, 0.2, 0.5, 0.97, 1.0])
def test_cut_point_equals_a_sort(density, path):
    for name, delta in _tensors():
        k = max(1, int(density * delta.numel()))
        assert cut.magnitude_cut_point(delta, k) == _reference(delta, k), name
        # the core's in-memory selection (`topk_mask`'s, for AdaMerging): the same answers
        assert ops.kth_largest_magnitude(delta, k) == _reference(delta, k)[:2], name


def test_the_misleading_sample_takes_the_fallback(monkeypatch):
    """The fallback really runs (and the window really answers the usual case)."""
    monkeypatch.setenv("PREFKIT_KERNELS", "torch")  # the window is the eager path's
    calls = []
    window = cut.windowed_cut_point

    def spy(flat, k):
        calls.append(window(flat, k))
        return calls[-1]

    monkeypatch.setattr(cut, "windowed_cut_point", spy)
    tensors = dict(_tensors())
    delta = tensors["misleading sample"]
    k = int(0.2 * delta.numel())
    assert cut.magnitude_cut_point(delta, k) == _reference(delta, k)
    assert calls == [None]
    cut.magnitude_cut_point(tensors["gaussian"], k)
    assert calls[-1] is not None


def test_streamed_selection_equals_a_sort(path):
    """MagnitudeSelection over pieces (slabs, global trim) gives the same cut-off."""
    for name, delta in _tensors():
        k = max(1, int(0.3 * delta.numel()))
        selection = MagnitudeSelection()
        for piece in delta.split(70_001):
            selection.add(piece)
        if selection.choose(k):
            for piece in reversed(delta.split(50_000)):  # round 2 in any order
                selection.add(piece)
        assert selection.result() == _reference(delta, k), name
