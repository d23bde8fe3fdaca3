"""Hypothesis properties of the built-in methods."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prefkit.plugins.linear import LinearMethod, LinearParams
from prefkit.plugins.task_arithmetic import TaskArithmeticMethod, TaskArithmeticParams
from prefkit.plugins.ties import TiesMethod, TiesModelParams, TiesParams

from prefkit.api import MergeInfo, TensorInfo, WeightParams
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from tests.helpers import write_recipe

INFO = MergeInfo(TensorInfo("w", None, 0.0, ()))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@st.composite
def groups(draw, min_models=2, max_models=5):
    m = draw(st.integers(min_models, max_models))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    models = [base + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(m)]
    weights = draw(st.lists(st.floats(0.1, 3.0), min_size=m, max_size=m))
    return base, models, weights


def fresh(tensors):
    """Merge methods own their input buffers (they may overwrite them): pass copies."""
    return [t.clone() for t in tensors]


def _run(method, params, models, base, weights, densities=None):
    if isinstance(method, TiesMethod):
        mps = [TiesModelParams(weight=w, density=d) for w, d in zip(weights, densities)]
    else:
        mps = [WeightParams(weight=w) for w in weights]
    return method.merge(fresh(models), base=base, params=params, model_params=mps, info=INFO)


METHODS = [
    (LinearMethod(), LinearParams()),
    (TaskArithmeticMethod(), TaskArithmeticParams.model_validate({"lambda": 0.7})),
    (TiesMethod(), TiesParams(consensus="sum")),
    (TiesMethod(), TiesParams(consensus="count", normalize=False)),
]


@settings(deadline=2000, max_examples=60)
@given(groups(), st.sampled_from(range(len(METHODS))), st.randoms(use_true_random=False),
       st.floats(0.05, 1.0))
def test_model_order_does_not_matter(group, which, rnd, density):
    base, models, weights = group
    method, params = METHODS[which]
    densities = [density] * len(models)
    order = list(range(len(models)))
    rnd.shuffle(order)
    a = _run(method, params, models, base, weights, densities)
    b = _run(method, params, [models[i] for i in order], base, [weights[i] for i in order], densities)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@settings(deadline=2000, max_examples=60)
@given(groups(), st.booleans())
def test_ties_density_one_with_agreeing_signs_is_task_arithmetic(group, normalize):
    base, models, weights = group
    # make every task vector point the same way, entry by entry, and never vanish
    direction = torch.sign(models[0] - base)
    direction[direction == 0] = 1
    models = [base + direction * ((m - base).abs() + 1e-3) for m in models]
    ties = TiesMethod().merge(
        fresh(models), base=base,
        params=TiesParams.model_validate({"normalize": normalize, "lambda": 0.5}),
        model_params=[TiesModelParams(weight=w, density=1.0) for w in weights], info=INFO)
    ta = TaskArithmeticMethod().merge(fresh(models), base=base,
        params=TaskArithmeticParams.model_validate({"normalize": normalize, "lambda": 0.5}),
        model_params=[WeightParams(weight=w) for w in weights], info=INFO)
    torch.testing.assert_close(ties, ta, atol=1e-9, rtol=1e-9)


@settings(deadline=2000, max_examples=40)
@given(groups(), st.sampled_from(range(len(METHODS))), st.sampled_from(DTYPES))
def test_shape_and_dtype_preserved(group, which, dtype):
    base, models, weights = group
    method, params = METHODS[which]
    out = _run(method, params, [m.to(dtype) for m in models], base.to(dtype), weights,
               [0.5] * len(models))
    assert out.shape == base.shape and out.dtype == dtype


@settings(deadline=2000, max_examples=40)
@given(groups(min_models=1))
def test_averaging_identical_models_returns_the_model(group):
    _, models, weights = group
    same = [models[0]] * len(models)
    out = _run(LinearMethod(), LinearParams(), same, None, weights)
    torch.testing.assert_close(out, models[0], atol=1e-6, rtol=1e-6)


@settings(deadline=None, max_examples=15)
@given(st.floats(0.01, 100.0), st.sampled_from(["linear", "task_arithmetic", "ties"]))
def test_uniform_preference_is_the_unweighted_method(tmp_path_factory, scale, method):
    from prefkit.registry import load_registry
    from prefkit.testing import make_zoo
    from tests.conftest import builtin_plugins

    root = tmp_path_factory.getbasetemp() / "uniform_zoo"
    if not root.exists():
        make_zoo(root, tasks={"a": 2, "b": 2, "c": 2}, base_head=True)
    registry = load_registry(entry_points=False, plugins=builtin_plugins())
    base = "" if method == "linear" else f"base_model: {root}/base\n"  # mergekit's linear merges it
    body = (f"merge_method: {method}\n{base}models:\n"
            + "".join(f"  - model: {root}/{t}\n" for t in "abc"))
    folder = tmp_path_factory.mktemp("uniform")
    pref = resolve(load_recipe(write_recipe(folder, body + f"preference: [{scale}, {scale}, {scale}]\n",
                                            "p.yaml")), registry, folder / "o")
    plain = resolve(load_recipe(write_recipe(folder, body + "parameters: {weight: 1.0}\n", "w.yaml")),
                    registry, folder / "o")
    for a, b in zip(pref.tensors, plain.tensors):
        assert [p.weight for p in a.model_params] == [p.weight for p in b.model_params]
        assert all(abs(p.weight - 1.0) < 1e-12 for p in a.model_params)
