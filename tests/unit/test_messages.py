"""prefkit.recipe.messages: pydantic's error types in prefkit's words (value, what is wrong, the
allowed range or choices, a hint)."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefkit.recipe.messages import describe, show, with_hint


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(1, gt=0, lt=10)
    flag: bool = True
    name: str = "x"
    fields: list[str] = Field(default_factory=lambda: ["a"], min_length=1, max_length=2)
    mode: Literal["sum", "count"] = "sum"
    share: float = Field(0.5, gt=0, le=1, allow_inf_nan=False)
    num_samples: int | None = Field(None, ge=1)
    needed: str


@pytest.mark.parametrize("data, line", [
    ({"count": 2.5}, "2.5 is not a whole number; must be a whole number above 0 and below 10"),
    ({"count": 0}, "0 is not more than 0; must be a whole number above 0 and below 10"),
    ({"count": 12}, "12 is more than 10; must be a whole number above 0 and below 10"),
    ({"count": "ten"}, "'ten' is not a whole number; must be a whole number above 0 and below 10"),
    ({"flag": "maybe"}, "'maybe' is not true or false (write true or false, without quotes)"),
    ({"name": 5}, '5 is a number; must be text (quote it to use it as text: "5")'),
    ({"name": None}, "no value is given; must be text"),
    ({"fields": ["a", "b", "c"]}, "['a', 'b', 'c'] has 3 entries; must have 1 to 2 entries"),
    ({"fields": []}, "[] is empty; must have 1 to 2 entries"),
    ({"mode": "coutn"}, "'coutn' is not a choice; use one of: sum, count (did you mean 'count'?)"),
    ({"share": 1.5}, "1.5 is more than 1; must be a number above 0 and at most 1"),
    ({"share": float("nan")}, "nan is not a finite number; must be a finite number above 0 and at most 1"),
    ({"share": [1]}, "[1] is a list; must be a number above 0 and at most 1"),
    ({"num_samples": 0}, "0 is less than 1; must be a whole number of at least 1 (leave num_samples "
                         "out to score every example)"),
    ({"other": 1}, "unknown key (allowed here: count, fields, flag, mode, name, needed, num_samples, "
                   "share)"),
    ({}, "required key is missing (add needed: here)"),
])
def test_each_error_type_names_the_value_and_the_rule(data, line):
    data = {"needed": "y", **data} if "needed" not in data and data else data
    with pytest.raises(ValidationError) as caught:
        _Model.model_validate(data)
    assert with_hint(*describe(caught.value.errors()[0], _Model)) == line


def test_values_are_shown_as_a_recipe_spells_them():
    assert [show(True), show(None), show(0.5), show("a")] == ["true", "null", "0.5", "'a'"]
    assert show("x" * 100) == "'" + "x" * 38 + "…"
