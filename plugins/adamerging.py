"""AdaMerging, preference-aware: task arithmetic whose coefficients are learned on unlabeled data.

Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
https://arxiv.org/abs/2310.02575.

    θ = θ_0 + Σ_k λ_k τ_k,   λ = argmin Σ_i p_i·H_i   (H_i: prediction entropy of task i's head)

λ per model, per model and transformer block, or per model and tensor (`train.granularity`), on
plain or TIES-trimmed task vectors (`train.vectors: ties`, AdaMerging++), with the preference
combining the entropies linearly or by the weighted Chebyshev scalarization. `solve` learns λ
(`prefkit.train.adamerging`); `merge` applies them tensor by tensor in the streaming executor.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefkit.api import MergeInfo, Params, Solution, SolveContext, SolverMethod, hookimpl
from prefkit.train.adamerging import AdaMergingSettings, apply, learn


class AdaMerging(SolverMethod):
    name = "adamerging"
    summary = "Task arithmetic with λ learned by minimising Σ_i p_i·entropy_i on unlabeled data."
    reference_url = "https://arxiv.org/abs/2310.02575"
    Settings = AdaMergingSettings

    def solve(self, context: SolveContext) -> Solution:
        return learn(context)

    def merge(self, tensors: Sequence, *, base, params: Params, model_params: Sequence[Params],
              info: MergeInfo):
        return apply(list(tensors), base, info.name, info.layer, info.state)


@hookimpl
def prefkit_register_methods(register):
    register(AdaMerging())
