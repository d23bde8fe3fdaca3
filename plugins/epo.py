"""Multi-task fine-tuning with EPO search (Exact Pareto Optimal search, Mahapatra & Rajan, ICML
2020): every step picks task weights α by a linear program on the Gram matrix of the task
gradients, first moving the losses onto the preference ray (p_i·L_i equal, "balance" mode) and then
descending along it ("descent" mode). The maths is `prefkit.moo.epo_search_direction`.
"""

from __future__ import annotations

from pydantic import Field

from prefkit.api import TrainerMethod, TrainSettings, hookimpl


class EPOSettings(TrainSettings):
    eps: float = Field(1e-4, ge=0, description="Non-uniformity above which a step balances "
                       "(moves towards the preference ray) instead of descending.")


class EPO(TrainerMethod):
    name = "epo"
    aliases = ("epo_search",)
    summary = "Fine-tune on all tasks with EPO search: reach the Pareto point where p_i·L_i are equal."
    reference_url = "https://proceedings.mlr.press/v119/mahapatra20a.html"
    Settings = EPOSettings
    uses_gradients = True

    def start(self, preference, settings):
        return {"alpha": (preference / preference.sum()).tolist()}

    def task_weights(self, losses, *, preference, settings, state, gram=None):
        from prefkit.moo import epo_search_direction

        direction = epo_search_direction(losses, None, preference, gram=gram, eps=settings.eps,
                                         fallback=state["alpha"])
        state.update(alpha=direction.alpha.tolist(), mode=direction.mode,
                     non_uniformity=round(direction.non_uniformity, 8),
                     lp_success=direction.lp_success)
        return direction.alpha


@hookimpl
def prefkit_register_methods(register):
    register(EPO())
