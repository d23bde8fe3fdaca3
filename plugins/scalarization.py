"""Multi-task fine-tuning steered by a scalarization of the per-task losses.

`chebyshev`: minimise max_i p_i (L_i − z_i) (or its smooth form μ·logsumexp(p ⊙ (L − z)/μ)), the
classic way to reach the Pareto point on the preference ray (higher p_i: smaller loss for task i).
`linear_scalarization`: minimise Σ p_i L_i (the baseline the others are compared with).
Both train with the shared loop of `prefkit.train`; the task weights of a step are the gradient
of the scalarization with respect to the losses, computed by `prefkit.moo`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefkit.api import TrainerMethod, TrainSettings, hookimpl


class ChebyshevSettings(TrainSettings):
    ideal: Literal["zero", "min"] | list[float] = Field(
        "zero", description="The ideal point z: zero, the running minimum of each task's loss "
        "(min), or one number per task.")
    mu: float | None = Field(None, gt=0, description="Smooth form with this temperature; "
                             "null: the hard max.")


class Chebyshev(TrainerMethod):
    name = "chebyshev"
    aliases = ("chebyshev_scalarization",)
    summary = "Fine-tune on all tasks minimising max_i p_i·(L_i − z_i) (weighted Chebyshev)."
    reference_url = "https://doi.org/10.1007/978-1-4615-5563-6"  # Miettinen, Nonlinear MOO (1999)
    Settings = ChebyshevSettings

    def start(self, preference, settings):
        if isinstance(settings.ideal, list) and len(settings.ideal) != len(preference):
            raise ValueError(f"train.ideal has {len(settings.ideal)} entries for "
                             f"{len(preference)} tasks")
        return {}

    def task_weights(self, losses, *, preference, settings, state, gram=None):
        import torch

        from prefkit.moo import chebyshev_scalarization

        if settings.ideal == "zero":
            ideal = torch.zeros_like(losses)
        elif settings.ideal == "min":
            previous = torch.tensor(state.get("ideal", losses.tolist()), dtype=losses.dtype)
            ideal = torch.minimum(previous, losses)
            state["ideal"] = ideal.tolist()
        else:
            ideal = torch.tensor(settings.ideal, dtype=losses.dtype)
        at = losses.clone().requires_grad_(True)
        value = chebyshev_scalarization(at, preference, ideal=ideal, mu=settings.mu)
        (alpha,) = torch.autograd.grad(value, at)
        return alpha


class LinearScalarization(TrainerMethod):
    name = "linear_scalarization"
    summary = "Fine-tune on all tasks minimising Σ_i p_i·L_i (the weighted-sum baseline)."
    reference_url = "https://doi.org/10.1007/978-1-4615-5563-6"

    def task_weights(self, losses, *, preference, settings, state, gram=None):
        return preference.clone()


@hookimpl
def prefkit_register_methods(register):
    register(Chebyshev())
    register(LinearScalarization())
