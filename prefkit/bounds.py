"""Bounds on the preference, checked when a recipe is validated, so that finite inputs cannot
overflow the merge arithmetic through it: each entry finite, 0 ≤ p ≤ PREFERENCE_MAX, and
Σp ≥ PREFERENCE_MIN_SUM, so that the weights m·p_i/Σp stay between 0 and the number of models.
Errors name the value and the allowed range; the recipe's loader puts the field (with the entry's
index) and its line in front. The built-in methods bound their own weights and `lambda`
(finite, |x| ≤ 1e6) in their Params (plugins import only prefkit's public API).
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

PREFERENCE_MAX = 1e6
PREFERENCE_MIN_SUM = 1e-9


def number(x: float) -> str:
    """1e6 as `1e6`, 0.25 as `0.25`: compact, and the same text as a recipe would hold."""
    text = f"{x:g}"
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _out_of_range(message: str) -> PydanticCustomError:
    return PydanticCustomError("out_of_range", message)


PREFERENCE_ENTRY = f"each entry must be a finite number from 0 to {number(PREFERENCE_MAX)}"


def check_preference_entry(value: float) -> float:
    """One preference entry: finite, 0 ≤ p ≤ PREFERENCE_MAX."""
    why = ("is not a finite number" if not math.isfinite(value) else "is negative" if value < 0
           else f"is over {number(PREFERENCE_MAX)}" if value > PREFERENCE_MAX else None)
    if why is not None:
        hint = " (use 0 to ignore a task)" if why == "is negative" else ""
        raise _out_of_range(f"{value!r} {why}; {PREFERENCE_ENTRY}{hint}")
    return value


def _not_boolean(value: object) -> object:
    """true / false are not weights (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise _out_of_range(f"{'true' if value else 'false'} is not a number; {PREFERENCE_ENTRY}")
    return value


PreferenceEntry = Annotated[float, BeforeValidator(_not_boolean), AfterValidator(check_preference_entry)]


def preference_problem(values: list[float]) -> str | None:
    """What is wrong with a whole preference whose entries passed `check_preference_entry`."""
    if not values:
        return (f"[] is empty (give one number from 0 to {number(PREFERENCE_MAX)} per model, in "
                "the order of models:)")
    total = math.fsum(values)
    if total == 0:
        return ("every entry is 0; at least one must be more than 0 (the entries are the models' "
                "shares: only their ratios count)")
    if total < PREFERENCE_MIN_SUM:
        return (f"preference sums to {total!r}; the sum must be at least "
                f"{number(PREFERENCE_MIN_SUM)} (scale every entry up: only the ratios count)")
    return None
