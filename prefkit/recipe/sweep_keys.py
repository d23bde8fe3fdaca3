"""The sweep keys of a recipe (pydantic, unknown keys forbidden): `preferences`, `methods`
(each may have a `grid:` of settings), `seeds`, `keep_models`, `wandb`, `logging`.
`prefkit.recipe.schema.Recipe` holds them as top-level fields; what they mean is in
`prefkit.sweeps.points`. (Part of the recipe schema, so the schema
imports nothing of the sweep machinery.)"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreferenceGrid(_Strict):
    """Every preference on the simplex with entries k / steps (k = 0..steps, summing to 1)."""

    grid: Literal["simplex"] = Field(description="The only grid: the probability simplex.")
    steps: int = Field(ge=1, le=100, description="Divisions of each axis: steps=4 gives 0, .25, .5, ...")


_PREFERENCE_LIST = TypeAdapter(list[list[float]])


def _check_preference(i: int, p: list[float]) -> str | None:
    """What is wrong with the sweep's i-th preference, naming the entry and its value: the same
    rules as a recipe's `preference:` (`prefkit.bounds`)."""
    from pydantic_core import PydanticCustomError

    from prefkit.bounds import check_preference_entry, preference_problem

    for j, x in enumerate(p):
        try:
            check_preference_entry(x)
        except PydanticCustomError as exc:
            return f"[{i}][{j}]: {exc.message()}"
    problem = preference_problem(p)
    return None if problem is None else f"[{i}] = {p}: {problem}"


def preferences_value(value: Any, handler: Any) -> Any:
    """Wrap validator of `preferences`: a mapping is a grid, anything else a list of vectors.
    Picking the branch here keeps pydantic from reporting the errors of both."""
    if value is None:
        return None
    if isinstance(value, dict):
        return PreferenceGrid.model_validate(value)
    if isinstance(value, list) and any(isinstance(x, bool) for p in value if isinstance(p, list)
                                       for x in p):
        raise ValueError("true / false is not a number; each entry of each preference must be a "
                         "finite number from 0 to 1e6")
    vectors = _PREFERENCE_LIST.validate_python(value)
    if not vectors:
        raise ValueError("preferences is empty; give a list of preferences or {grid: simplex, steps: K}")
    for i, p in enumerate(vectors):
        problem = _check_preference(i, p)
        if problem:
            raise ValueError(problem)
    return vectors


GRID_KEY = re.compile(r"^(parameters|train)\.([A-Za-z_][A-Za-z0-9_]*)$")


class MethodEntry(_Strict):
    """One method of a sweep: a merge (or trainer) method with its parameters."""

    merge_method: str = Field(description="A registered method name (`prefkit methods`).")
    name: str | None = Field(None, description="Label in the report (default: the method name, "
                             "with its parameters when a method is listed twice).")
    parameters: dict[str, Any] | None = Field(None, description="The method's shared parameters.")
    train: dict[str, Any] | None = Field(None, description="Training settings of a trainer method.")
    grid: dict[str, list[Any]] | None = Field(
        None, description="Settings to sweep, each a list of values: `train.steps: [30, 60, 120]` "
        "(a budget curve), `train.mu: [0.05, 0.2]`, `parameters.density: [0.2, 0.5]`; every "
        "combination is a row of its own at every preference.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("name is empty")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for key, values in (value or {}).items():
            if not GRID_KEY.match(key):
                raise ValueError(f"grid key {key!r} is not parameters.<name> or train.<name>")
            if not values:
                raise ValueError(f"grid {key}: the list of values is empty")
            if any(isinstance(v, (list, dict)) for v in values):
                raise ValueError(f"grid {key}: each value must be a number, string or boolean")
            repeated = [v for i, v in enumerate(values) if v in values[:i]]
            if repeated:
                raise ValueError(f"grid {key}: {repeated[0]!r} is listed twice")
        return value


def seeds_value(value: Any) -> Any:
    """`seeds:` is a non-empty list of distinct integers ≥ 0."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    for i, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValueError(f"seeds[{i}] = {seed!r}: each seed must be an integer from 0 to 2^31-1")
    if len(set(value)) != len(value):
        raise ValueError(f"seeds {value}: a seed is listed twice")
    return value


class WandbSpec(_Strict):
    """Optional Weights & Biases logging of a sweep (one W&B run per sweep run)."""

    mode: Literal["disabled", "offline", "online"] = Field(
        "disabled", description="offline writes the run under <output>/wandb for `wandb sync`.")
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class LoggingSpec(_Strict):
    """Log records of a sweep: level, format and an optional file (the CLI's --log-* win)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["simple", "detailed", "json"] = "simple"
    file: str | None = Field(None, description="Also write the records here (appended).")
