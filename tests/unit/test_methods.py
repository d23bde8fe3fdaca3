"""Each built-in method against its formula, written independently here."""

from __future__ import annotations

import pytest
import torch
from prefkit.plugins.linear import LinearMethod, LinearParams
from prefkit.plugins.task_arithmetic import TaskArithmeticMethod, TaskArithmeticParams
from prefkit.plugins.ties import TiesMethod, TiesModelParams, TiesParams

from prefkit.api import MergeInfo, TensorInfo, WeightParams
from prefkit.ops import sign_consensus, topk_mask

INFO = MergeInfo(TensorInfo("layer.0.weight", 0, 0.0, ("a", "b", "c")))


def fresh(tensors):
    """Merge methods own their input buffers (they may overwrite them): pass copies."""
    return [t.clone() for t in tensors]


def _inputs(seed=0, m=3, shape=(7, 5)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(m)]
    return base, models


def reference_ties(base, models, weights, densities, *, lam=1.0, normalize=True, consensus="sum"):
    """TIES by the paper's steps, with a full sort for trimming."""
    trimmed = []
    for theta, density in zip(models, densities):
        tau = (theta - base).flatten()
        if density < 1:
            # mergekit: density 0 keeps nothing, otherwise at least one entry
            k = 0 if density <= 0 else max(1, int(density * tau.numel()))
            order = torch.sort(tau.abs(), descending=True, stable=True).indices
            keep = torch.zeros_like(tau)
            keep[order[:k]] = 1
            tau = tau * keep
        trimmed.append(tau)
    out = torch.zeros_like(trimmed[0])
    for j in range(out.numel()):
        vals = [w * t[j].item() for w, t in zip(weights, trimmed)]
        if consensus == "sum":
            sign = 1.0 if sum(vals) >= 0 else -1.0
        else:
            sign = 1.0 if sum((v > 0) - (v < 0) for v in vals) >= 0 else -1.0
        agree = [(v, w) for v, w in zip(vals, weights) if v != 0 and (v > 0) == (sign > 0)]
        total = sum(v for v, _ in agree)
        if normalize:
            div = sum(w for _, w in agree)
            total = total / div if div != 0 else total
        out[j] = lam * total
    return base + out.reshape(base.shape)


def test_linear_is_weighted_mean():
    _, models = _inputs()
    w = [1.0, 2.0, 0.5]
    got = LinearMethod().merge(fresh(models), base=None, params=LinearParams(),
                               model_params=[WeightParams(weight=x) for x in w], info=INFO)
    want = sum(wi * m for wi, m in zip(w, models)) / sum(w)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_linear_without_normalize_is_weighted_sum():
    _, models = _inputs()
    got = LinearMethod().merge(fresh(models), base=None, params=LinearParams(normalize=False),
                               model_params=[WeightParams(weight=x) for x in (1, 1, 1)], info=INFO)
    torch.testing.assert_close(got, models[0] + models[1] + models[2], atol=1e-6, rtol=0)


def test_linear_keeps_half_precision_dtype():
    _, models = _inputs()
    half = [m.to(torch.bfloat16) for m in models]
    got = LinearMethod().merge(fresh(half), base=None, params=LinearParams(),
                               model_params=[WeightParams(weight=1.0)] * 3, info=INFO)
    assert got.dtype == torch.bfloat16


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_task_arithmetic_formula(normalize, lam):
    base, models = _inputs()
    w = [0.5, 1.5, 1.0]
    got = TaskArithmeticMethod().merge(fresh(models), base=base,
        params=TaskArithmeticParams.model_validate({"normalize": normalize, "lambda": lam}),
        model_params=[WeightParams(weight=x) for x in w], info=INFO)
    tv = sum(wi * (m - base) for wi, m in zip(w, models))
    if normalize:
        tv = tv / sum(w)
    torch.testing.assert_close(got, base + lam * tv, atol=1e-6, rtol=0)


@pytest.mark.parametrize("consensus", ["sum", "count"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("densities", [(0.2, 0.2, 0.2), (1.0, 0.5, 0.1), (0.0, 1.0, 0.3)])
def test_ties_matches_reference(consensus, normalize, densities):
    base, models = _inputs(seed=3)
    w = [1.0, 0.7, 1.3]
    got = TiesMethod().merge(fresh(models), base=base,
        params=TiesParams.model_validate({"normalize": normalize, "lambda": 0.9,
                                          "consensus": consensus}),
        model_params=[TiesModelParams(weight=a, density=d) for a, d in zip(w, densities)],
        info=INFO)
    want = reference_ties(base, models, w, densities, lam=0.9, normalize=normalize,
                          consensus=consensus)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_topk_mask_keeps_k_largest_and_lowest_index_on_ties():
    delta = torch.tensor([0.5, -2.0, 0.5, 3.0, -0.5, 0.1])
    assert topk_mask(delta, 2).tolist() == [False, True, False, True, False, False]
    # three entries tie at |0.5| for the last place: the lowest index wins
    assert topk_mask(delta, 3).tolist() == [True, True, False, True, False, False]
    assert topk_mask(delta, 4).tolist() == [True, True, True, True, False, False]
    assert topk_mask(delta, 0).sum() == 0 and topk_mask(delta, 99).all()


def test_sign_consensus_rules():
    deltas = torch.tensor([[1.0, -1.0, 0.0], [-3.0, -1.0, 2.0], [1.0, 0.5, -2.0]])
    # sum: column sums -1, -1.5, 0 → signs -, -, + (0 elects +)
    assert sign_consensus(deltas, "sum").tolist() == [
        [False, True, False], [True, True, True], [False, False, False]]
    # count: sign sums +1, -1, 0 → +, -, +
    assert sign_consensus(deltas, "count").tolist() == [
        [True, True, False], [False, True, True], [True, False, False]]
    with pytest.raises(ValueError):
        sign_consensus(deltas, "median")
