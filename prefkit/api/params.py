"""The parameter models every method's Params subclass: unknown keys are errors, values frozen."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

SCALE_LIMIT = 1e6  # |weight|, |lambda| at most this, so that finite inputs cannot overflow a merge


def _bounded(value: float) -> float:
    if not math.isfinite(value) or abs(value) > SCALE_LIMIT:
        raise PydanticCustomError("out_of_range", f"{value!r} is out of range; allowed: a finite "
                                  "number from -1e6 to 1e6")
    return value


# A weight or scale parameter: finite, |x| <= SCALE_LIMIT. The error names the value and the
# range; the recipe's loader puts the field and its line in front.
Scale = Annotated[float, AfterValidator(_bounded)]


class Params(BaseModel):
    """Base class of every method's parameter models: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoParams(Params):
    """For methods that take no parameters of a kind."""


class WeightParams(Params):
    """The per-model parameter every weighted method shares."""

    weight: Scale = Field(description="Weight of this model's tensor or task vector "
                          "(finite, |w| <= 1e6).")
