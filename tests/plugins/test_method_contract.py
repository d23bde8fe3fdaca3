"""Every built-in tensor method passes the contract that plugin authors test against, and the
contract check catches each rule it states."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pydantic import Field

from prefkit.api import NoParams, Params, TensorMethod, WeightParams
from prefkit.testing import check_method_contract
from prefkit.testing.pytest_plugin import make_registry


def _tensor_methods():
    registry = make_registry()
    return [reg.method for _, reg in sorted(registry.methods.items()) if reg.method.kind == "tensor"]


def test_the_builtins_are_all_checked():
    names = {m.name for m in _tensor_methods()}
    assert {"linear", "task_arithmetic", "ties"} <= names


@pytest.mark.parametrize("method", _tensor_methods(), ids=lambda m: m.name)
def test_builtin_passes_the_contract(method):
    check_method_contract(method)


def test_ties_global_trim_passes_through_its_prepare_pass():
    ties = make_registry().methods["ties"].method
    check_method_contract(ties, params=ties.Params(trim="global"), model_params={"density": 0.5})


class _Good(TensorMethod):
    name = "good_average"
    summary = "Weighted average."
    reference_url = "https://example.org/paper"
    base = "input"
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        total = sum(p.weight for p in model_params)
        return sum(p.weight * t.float() for p, t in zip(model_params, tensors)) / total


def test_a_correct_method_passes():
    check_method_contract(_Good())


class _MutatesBase(TensorMethod):
    name = "mutates_base"
    summary = "Adds task vectors into the base buffer."
    reference_url = "https://example.org"
    ModelParams = WeightParams

    def merge(self, tensors, *, base, params, model_params, info):
        for t, p in zip(tensors, model_params):
            base += p.weight * (t - base)
        return base


class _Random(_Good):
    name = "unseeded"

    def merge(self, tensors, *, base, params, model_params, info):
        return super().merge(tensors, base=base, params=params, model_params=model_params,
                             info=info) + torch.rand(tensors[0].shape)


class _IgnoresWeights(_Good):
    name = "ignores_weights"

    def merge(self, tensors, *, base, params, model_params, info):
        return sum(t.float() for t in tensors) / len(tensors)


class _WrongShape(_Good):
    name = "wrong_shape"

    def merge(self, tensors, *, base, params, model_params, info):
        return tensors[0].reshape(-1)[:1]


class _LooseParams(Params):
    model_config = {"extra": "ignore"}
    scale: float = 1.0


class _BadMetadata(_Good):
    name = "Bad-Name"
    summary = "two\nlines"
    reference_url = "arxiv 1234"
    Params = _LooseParams
    param_aliases = {"k": "density"}


@pytest.mark.parametrize("method, message", [
    (_MutatesBase(), r"float32\[7, 5\]: merge modified the base tensor"),
    (_Random(), r"two merges of the same inputs differ"),
    (_IgnoresWeights(), r"a model with weight 0 changed the result"),
    (_IgnoresWeights(), r"changing the weights did not change the result"),
    (_WrongShape(), r"float32\[7, 5\]: merge returned shape \[1\]"),
    (_BadMetadata(), r"name must be a snake_case string, not 'Bad-Name'"),
    (_BadMetadata(), r"summary must be one non-empty line"),
    (_BadMetadata(), r"reference_url must be the paper's http\(s\) address"),
    (_BadMetadata(), r"Params must reject unknown keys"),
    (_BadMetadata(), r"Params.scale has no description"),
    (_BadMetadata(), r"param_aliases maps 'k' to 'density', which is no parameter"),
])
def test_each_broken_rule_is_reported(method, message):
    with pytest.raises(AssertionError, match=message):
        check_method_contract(method)


def test_a_raising_merge_is_reported_per_case():
    class Raises(_Good):
        name = "raises"

        def merge(self, tensors, *, base, params, model_params, info):
            if tensors[0].dtype == torch.float16:
                raise RuntimeError("no half support")
            return super().merge(tensors, base=base, params=params, model_params=model_params,
                                 info=info)

    with pytest.raises(AssertionError) as err:
        check_method_contract(Raises())
    lines = [line for line in str(err.value).splitlines() if line.startswith("- ")]
    assert lines == ["- float16[7, 5]: merge raised RuntimeError: no half support",
                     "- float16[3]: merge raised RuntimeError: no half support"]


def test_required_params_must_be_given_to_the_check():
    class Needs(Params):
        scale: float = Field(description="Required scale.")

    class NeedsScale(_Good):
        name = "needs_scale"
        Params = Needs

    with pytest.raises(AssertionError, match=r"Params\(\) needs a value for 'scale'; pass params="):
        check_method_contract(NeedsScale())


def test_trainer_methods_are_refused():
    class Trainer:
        kind = "trainer"
        name = "epo_like"
        Params = ModelParams = NoParams

    with pytest.raises(TypeError, match="checks tensor methods \\(kind 'tensor'\\); .* kind 'trainer'"):
        check_method_contract(Trainer())


# --- what `elementwise` and `takes_numpy` declare ------------------------------------------


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "ties"])
def test_builtin_declarations_hold(registry, name):
    method = registry.methods[name].method
    assert method.elementwise  # so the slab and chunk checks ran
    check_method_contract(method)


@pytest.mark.parametrize("params, model_params", [
    ({}, {"density": 0.5}),
    ({"rescale": True}, {"density": 0.3}),
    ({"trim": "global", "rescale": True, "consensus": "count"}, {"density": 0.3}),
], ids=["tensor", "tensor-rescale", "global-rescale-count"])
def test_ties_trimming_is_the_same_in_slabs(registry, params, model_params):
    """TIES's per-tensor cut-offs come from prepare_tensor when a tensor is merged in slabs."""
    ties = registry.methods["ties"].method
    check_method_contract(ties, params=ties.Params(**params), model_params=model_params)


class _MaxScaled(_Good):
    """Divides by the merged tensor's largest magnitude: a statistic of the whole tensor."""

    name = "max_scaled"
    elementwise = True

    def merge(self, tensors, *, base, params, model_params, info):
        merged = super().merge(tensors, base=base, params=params, model_params=model_params,
                               info=info)
        top = info.tensor_state if info.tensor_state is not None else merged.abs().max()
        return merged / top


class _MaxScaledInSlabs(_MaxScaled):
    """The same, with the whole tensor's maximum computed before its slabs: elementwise."""

    name = "max_scaled_in_slabs"

    def prepare_tensor(self, scan, *, params, model_params, info):
        top = None
        for item in scan():
            merged = _Good.merge(self, item.tensors, base=item.base, params=params,
                                 model_params=model_params, info=item.info)
            top = merged.abs().max() if top is None else torch.maximum(top, merged.abs().max())
        return top


def test_a_false_elementwise_declaration_fails_on_one_line():
    with pytest.raises(AssertionError) as err:
        check_method_contract(_MaxScaled())
    lines = [line for line in str(err.value).splitlines() if line.startswith("- ")]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"- method 'max_scaled' declares elementwise=True but merging tensor "
        r"'model\.layers\.0\.mlp\.weight' \(float32\[25, 10\]\) in slabs of rows "
        r"\[\(0, 13\), \(13, 25\)\] differs from merging it whole \(first difference at "
        r"\[\d+, \d+\]: \S+ whole, \S+ in slabs\)", lines[0]), lines[0]


def test_an_elementwise_method_may_use_prepare_tensor():
    check_method_contract(_MaxScaledInSlabs())


def test_elementwise_chunks_must_not_depend_on_threads():
    from prefkit.engine.threads import worker_count

    class Threads(_Good):
        name = "counts_threads"
        elementwise = True

        def merge(self, tensors, *, base, params, model_params, info):
            return super().merge(tensors, base=base, params=params, model_params=model_params,
                                 info=info) * worker_count()

    with pytest.raises(AssertionError, match=r"method 'counts_threads' declares elementwise=True "
                       r"but merging tensor 'model\.embed_tokens\.weight' \(float32\[1029, 256\]\) "
                       r"in chunks over 3 threads differs from merging it on one thread"):
        check_method_contract(Threads())


class _NumpyWider(_Good):
    """Sums numpy arrays in float64 where torch sums in the inputs' dtype."""

    name = "numpy_wider"
    takes_numpy = True

    def merge(self, tensors, *, base, params, model_params, info):
        total = sum(p.weight for p in model_params)
        if isinstance(tensors[0], np.ndarray):
            wide = sum(p.weight * t.astype(np.float64) for p, t in zip(model_params, tensors))
            return (wide / total).astype(tensors[0].dtype)
        return sum(p.weight * t for p, t in zip(model_params, tensors)) / total


def test_a_false_takes_numpy_declaration_fails_on_one_line():
    with pytest.raises(AssertionError) as err:
        check_method_contract(_NumpyWider())
    lines = [line for line in str(err.value).splitlines() if line.startswith("- ")]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"- method 'numpy_wider' declares takes_numpy=True but merging tensor '[\w.]+' "
        r"\(float(16|32|64)\[[\d, ]+\]\) as numpy arrays differs from merging it as torch "
        r"tensors \(first difference at \[[\d, ]*\]: \S+ torch, \S+ numpy\)", lines[0]), lines[0]


def test_takes_numpy_checks_only_its_numpy_dtypes():
    """A method whose numpy arithmetic equals torch's in float32 only says so (numpy_dtypes):
    its other dtypes then merge torch tensors, and it passes."""

    class Float32Only(_NumpyWider):
        name = "numpy_float32_only"
        numpy_dtypes = frozenset({"float32"})

        def merge(self, tensors, *, base, params, model_params, info):
            if isinstance(tensors[0], np.ndarray) and tensors[0].dtype == np.float32:
                total = sum(p.weight for p in model_params)
                return sum(p.weight * t for p, t in zip(model_params, tensors)) / total
            return super().merge(tensors, base=base, params=params, model_params=model_params,
                                 info=info)

    with pytest.raises(AssertionError, match=r"numpy_wider' declares takes_numpy=True"):
        check_method_contract(_NumpyWider())
    check_method_contract(Float32Only())


def test_numpy_inputs_must_give_numpy_results():
    class ReturnsTorch(_Good):
        name = "returns_torch"
        takes_numpy = True

        def merge(self, tensors, *, base, params, model_params, info):
            return super().merge([torch.as_tensor(t) for t in tensors], base=base, params=params,
                                 model_params=model_params, info=info)

    with pytest.raises(AssertionError, match=r"declares takes_numpy=True but merging tensor "
                       r".* as numpy arrays returned Tensor, not a numpy array"):
        check_method_contract(ReturnsTorch())
