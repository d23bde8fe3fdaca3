"""Parameter settings keep mergekit's meaning: scalars, gradients, {filter, value} lists."""

from __future__ import annotations

import pytest

from prefkit.recipe.settings import evaluate, setting_problems


def ident(x):
    return x


@pytest.mark.parametrize("t, want", [(0.0, 0.2), (1.0, 0.8), (0.5, 0.5), (0.25, 0.35)])
def test_numeric_gradient_interpolates(t, want):
    assert evaluate([0.2, 0.8], "model.layers.3.w", t, ident) == pytest.approx(want)


def test_three_point_gradient():
    g = [0.0, 1.0, 0.0]
    assert evaluate(g, "x", 0.25, ident) == pytest.approx(0.5)
    assert evaluate(g, "x", 0.5, ident) == pytest.approx(1.0)
    assert evaluate(g, "x", 0.75, ident) == pytest.approx(0.5)


def test_non_numeric_gradient_steps():
    assert evaluate(["sum", "count"], "x", 0.4, ident) == "sum"
    assert evaluate(["sum", "count"], "x", 1.0, ident) == "count"
    assert evaluate([True, False], "x", 0.99, ident) is True


def test_filters_first_match_wins_and_none_means_unset():
    setting = [{"filter": "attention", "value": 0.1}, {"filter": "mlp", "value": 0.2},
               {"value": 0.9}]
    assert evaluate(setting, "layers.0.attention.q.weight", 0, ident) == 0.1
    assert evaluate(setting, "layers.0.mlp.up.weight", 0, ident) == 0.2
    assert evaluate(setting, "embed.weight", 0, ident) == 0.9
    assert evaluate([{"filter": "mlp", "value": 1}], "embed", 0, ident) is None
    assert evaluate({"filter": "*", "value": 3}, "embed", 0, ident) == 3


def test_filter_with_gradient_value():
    setting = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.5}]
    assert evaluate(setting, "layers.1.self_attn.q", 0.5, ident) == pytest.approx(0.5)
    assert evaluate(setting, "layers.1.self_attn.q", 1.0, ident) == pytest.approx(1.0)


def _check(x):
    return None if isinstance(x, (int, float)) and not isinstance(x, bool) else "not a number"


def test_problems_are_located():
    assert setting_problems(0.3, _check) == []
    assert setting_problems([0.1, "x"], _check) == [((1,), "not a number")]
    assert setting_problems([{"filter": "a", "value": "x"}], _check) == [((0, "value"), "not a number")]
    assert setting_problems([{"filtr": "a", "value": 1}], _check)[0][0] == (0, "filtr")
    assert setting_problems([], _check)[0][1].startswith("[] sets nothing")
    assert setting_problems([1, {"value": 1}], _check)[0][1].startswith("a list must hold only")
    assert setting_problems({"filter": "a"}, _check) == [((), "a conditional entry needs a value "
                                                             "(add value: <setting> beside filter:)")]
