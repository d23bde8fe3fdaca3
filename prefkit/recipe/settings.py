"""Parameter settings with mergekit's meaning (0.1.5).

A setting is one of:
- a scalar (`0.5`, `true`, `"sum"`);
- a list of scalars: a gradient over the layers, read at t = layer / (num_layers − 1); numeric lists
  interpolate linearly between neighbours, other lists pick `values[int(t·(len−1))]`;
- a `{filter, value}` mapping or a list of them: the first whose `filter` is a substring of the
  tensor name (or is missing / `*`) gives the value; none matching means "not set here".
Precedence: a model's own `parameters` beat the top-level ones, which beat the method's default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefkit.errors import did_you_mean
from prefkit.recipe.messages import show

Scalar = (bool, int, float, str)


def setting_problems(setting: Any, check_leaf: Callable[[Any], str | None]) -> list[tuple[tuple, str]]:
    """Structural and type problems of a setting, as (relative location, message) pairs."""
    if isinstance(setting, Scalar):
        problem = check_leaf(setting)
        return [((), problem)] if problem else []
    if isinstance(setting, dict):
        return _conditional_problems(setting, (), check_leaf)
    if isinstance(setting, list):
        if not setting:
            return [((), "[] sets nothing (give a value, a gradient list or {filter, value} "
                         "entries, or leave the parameter out)")]
        if all(isinstance(e, Scalar) for e in setting):
            return [((i,), p) for i, e in enumerate(setting) if (p := check_leaf(e))]
        if all(isinstance(e, dict) for e in setting):
            out: list[tuple[tuple, str]] = []
            for i, e in enumerate(setting):
                out += _conditional_problems(e, (i,), check_leaf)
            return out
        return [((), "a list must hold only values (a gradient) or only {filter, value} entries")]
    given = "no value is given" if setting is None else f"{show(setting)} is not a setting"
    return [((), f"{given}; must be a value, a gradient list or {{filter, value}} entries")]


def _conditional_problems(entry: dict, loc: tuple, check_leaf) -> list[tuple[tuple, str]]:
    extra = set(entry) - {"filter", "value"}
    if extra:
        key = sorted(extra)[0]
        return [((*loc, key), f"unknown key ({did_you_mean(key, ('filter', 'value'))}allowed in "
                              "a conditional entry: filter, value)")]
    if "value" not in entry:
        return [(loc, "a conditional entry needs a value (add value: <setting> beside filter:)")]
    if entry.get("filter") is not None and not isinstance(entry["filter"], str):
        found = entry["filter"]
        return [((*loc, "filter"), f"{show(found)} is not text; a filter must be a substring of "
                                   f'tensor names (quote it: "{found}")')]
    value = entry["value"]
    if isinstance(value, Scalar):
        problem = check_leaf(value)
        return [((*loc, "value"), problem)] if problem else []
    if isinstance(value, list) and value and all(isinstance(e, Scalar) for e in value):
        return [((*loc, "value", i), p) for i, e in enumerate(value) if (p := check_leaf(e))]
    given = "no value is given" if value is None else f"{show(value)} is not a setting"
    return [((*loc, "value"), f"{given}; value must be a scalar or a gradient list of scalars")]


def evaluate(setting: Any, tensor_name: str, t: float, validate: Callable[[Any], Any]) -> Any:
    """The value of a setting for one tensor, or None when its filters do not match."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, Scalar):
        return validate(setting)
    if not setting:
        return None
    if all(isinstance(e, Scalar) for e in setting):
        return _gradient(setting, t, validate)
    for entry in setting:
        pattern = entry.get("filter")
        if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
            return evaluate(entry["value"], tensor_name, t, validate)
    return None


def _gradient(values: list, t: float, validate: Callable[[Any], Any]) -> Any:
    checked = [validate(v) for v in values]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in checked):
        return checked[int(t * (len(checked) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return validate((1 - frac) * checked[i0] + frac * checked[i1])
