"""prefkit-dare's own tests: mergekit's results for the same seeds, the statistics DARE promises,
prefkit's method contract, and a merge through prefkit's fixtures (`prefkit.testing`)."""

from __future__ import annotations

import json
from pathlib import Path

import prefkit_dare
import pytest
import torch
from safetensors import safe_open

from prefkit.api import MergeInfo, TensorInfo
from prefkit.testing import check_method_contract

GOLDEN = Path(__file__).with_name("mergekit_golden.safetensors")
METHODS = {"dare_linear": prefkit_dare.DareLinear(), "dare_ties": prefkit_dare.DareTies()}
NAME = "model.layers.0.mlp.weight"


def merge(method, tensors, base, *, weights, densities, name=NAME, **shared):
    params = method.Params.model_validate(shared)
    model_params = [method.ModelParams(weight=w, density=d) for w, d in zip(weights, densities)]
    info = MergeInfo(TensorInfo(name, 0, 0.0, tuple(f"m{i}" for i in range(len(tensors)))))
    return method.merge([t.clone() for t in tensors], base=base, params=params,
                        model_params=model_params, info=info)


def _golden_cases():
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
    cases = json.loads(meta["cases"])
    return [(case, *spec) for case, spec in cases.items()], meta


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["model.layers.0.mlp.weight", "model.layers.0.mlp.bias"])
def test_equals_mergekit_for_the_same_seed(dtype, name):
    cases, meta = _golden_cases()
    weights, densities = json.loads(meta["weights"]), json.loads(meta["densities"])
    with safe_open(str(GOLDEN), "pt") as f:
        base = f.get_tensor(f"{dtype}/{name}/base")
        models = [f.get_tensor(f"{dtype}/{name}/model_{i}") for i in range(len(weights))]
        for case, method, shared, seed in cases:
            ours = merge(METHODS[method], models, base, weights=weights, densities=densities,
                         name=name, seed=seed, **shared)
            theirs = f.get_tensor(f"{case}/{dtype}/{name}")
            assert ours.dtype == theirs.dtype
            # the same masks: every entry mergekit dropped is dropped here, and the values agree
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7 if dtype == "float32" else 0,
                                       msg=f"{case}: differs from mergekit 0.1.5")


def _one_model(density, seed, rescale_by="density", shape=(50,)):
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=gen)
    tuned = base + torch.randn(shape, generator=gen)
    out = merge(METHODS["dare_linear"], [tuned], base, weights=[1.0], densities=[density],
                seed=seed, rescale_by=rescale_by)
    return out - base, tuned - base


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9])
def test_expected_result_is_the_undropped_task_vector(density):
    """E[m ⊙ τ / density] = τ: over S seeds each entry's mean is within 5 standard errors."""
    seeds = 2000
    total = torch.zeros(50, dtype=torch.float64)
    for seed in range(seeds):
        delta, tau = _one_model(density, seed)
        total += delta.double()
    mean = total / seeds
    stderr = tau.double().abs() * ((1 - density) / density / seeds) ** 0.5
    z = (mean - tau.double()).abs() / stderr
    assert z.max() < 5, f"worst entry is {z.max():.1f} standard errors from its task vector"


def test_l1_rescale_keeps_the_l1_norm_and_is_nearly_unbiased():
    delta, tau = _one_model(0.3, seed=11, rescale_by="l1_norm", shape=(20000,))
    torch.testing.assert_close(delta.abs().sum(), tau.abs().sum(), rtol=1e-5, atol=0)
    kept = delta != 0
    # kept entries are scaled by one factor, close to 1/density for a large tensor
    ratio = delta[kept] / tau[kept]
    # (up to float32 rounding of (base + τ̂) − base)
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-4, atol=0)
    assert abs(float(ratio.mean()) * 0.3 - 1) < 0.05


@pytest.mark.parametrize("density", [0.1, 0.3, 0.75])
def test_kept_fraction_is_the_density(density):
    n = 100_000
    delta, _ = _one_model(density, seed=3, shape=(n,))
    kept = float((delta != 0).double().mean())
    sigma = (density * (1 - density) / n) ** 0.5
    assert abs(kept - density) < 5 * sigma, (kept, density)


def test_density_edges():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, generator=gen)
    models = [base + torch.randn(40, generator=gen) for _ in range(2)]
    for name, method in METHODS.items():
        dropped = merge(method, models, base, weights=[1.0, 1.0], densities=[0.0, 0.0])
        assert torch.equal(dropped, base), name
    dense = merge(METHODS["dare_linear"], models, base, weights=[1.0, 0.5], densities=[1.0, 1.0])
    torch.testing.assert_close(dense, base + (models[0] - base) + 0.5 * (models[1] - base))


def test_seeded_per_tensor():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=gen)
    models = [base + torch.randn(64, generator=gen) for _ in range(2)]
    run = lambda **kw: merge(METHODS["dare_ties"], models, base, weights=[1.0, 1.0],  # noqa: E731
                             densities=[0.5, 0.5], **kw)
    assert torch.equal(run(seed=1), run(seed=1))
    assert not torch.equal(run(seed=1), run(seed=2))
    assert not torch.equal(run(seed=1), run(seed=1, name="model.layers.1.mlp.weight"))


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS)
def test_method_contract(method):
    check_method_contract(method)
    check_method_contract(method, model_params={"density": 0.5})


def test_installed_plugin_is_listed(prefkit_cli):
    from prefkit.registry import load_registry

    registry = load_registry()  # real entry points: this distribution must be installed
    result = prefkit_cli(["plugins", "--json"], registry=registry)
    assert result.exit_code == 0, result.stderr
    row = next(r for r in json.loads(result.stdout) if r["name"] == "dare")
    assert row["distribution"] == "prefkit-dare" and row["version"] == "0.1.0"
    assert row["methods"] == ["dare_linear", "dare_ties"] and row["error"] is None


def test_recipe_merge_through_prefkit(prefkit_zoo, prefkit_registry, prefkit_merge):
    """dare_ties that keeps everything is prefkit's ties at density 1 (both normalize)."""
    registry = prefkit_registry(prefkit_dare)
    models = "".join(f"  - model: {prefkit_zoo[t]}\n    parameters: {{weight: {w}}}\n"
                     for t, w in (("ag_news", 1.0), ("imdb", 0.5)))
    recipe = f"base_model: {prefkit_zoo['base']}\nmodels:\n{models}"
    dare = prefkit_merge("merge_method: dare_ties\nparameters: {normalize: true, density: 1.0}\n"
                         + recipe, registry)
    ties = prefkit_merge("merge_method: ties\n" + recipe, registry)
    assert dare.keys() == ties.keys()
    for name in ties:
        torch.testing.assert_close(dare[name], ties[name], rtol=0, atol=1e-7)
    sparse = prefkit_merge("merge_method: dare_linear\nparameters: {density: 0.5, seed: 4}\n"
                           + recipe, registry)
    again = prefkit_merge("merge_method: dare_linear\nparameters: {density: 0.5, seed: 4}\n"
                          + recipe, registry)
    assert all(torch.equal(sparse[n], again[n]) for n in sparse)
