"""The parameter models every method's Params subclass: unknown keys are errors, values frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    """Base class of every method's parameter models: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoParams(Params):
    """For methods that take no parameters of a kind."""


class WeightParams(Params):
    """The per-model parameter every weighted method shares."""

    weight: float = Field(description="Weight of this model's tensor (or task vector).")
