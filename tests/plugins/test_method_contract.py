"""Every built-in tensor method passes the contract that plugin authors test against, and the
contract check catches each rule it states."""

from __future__ import annotations

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
