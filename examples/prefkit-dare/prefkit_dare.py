"""DARE for prefkit: drop task-vector entries at random, rescale the rest, then merge.

Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
Lunch", ICML 2024, https://arxiv.org/abs/2311.03099.

For each model i and tensor: τ_i = θ_i − θ_0; keep each entry with probability `density`
(a Bernoulli mask m_i), then rescale the kept entries, τ̂_i = m_i ⊙ τ_i · r_i, where r_i is
- `rescale_by: l1_norm` (default, mergekit's rule): ‖τ_i‖₁ / ‖m_i ⊙ τ_i‖₁, or
- `rescale_by: density` (the paper's rule): 1 / density, which makes E[τ̂_i] = τ_i exactly.
Then
- `dare_linear`: θ_0 + λ · Σ_i w_i τ̂_i            (/ Σ_i w_i with `normalize`)
- `dare_ties`:   θ_0 + λ · Σ_i w_i τ̂_i [agrees]    (/ Σ_i w_i [agrees] with `normalize`), where an
  entry agrees when its sign is the sign of Σ_i w_i τ̂_i (TIES's election).

Randomness is seeded per tensor: a generator seeded by hash(seed, tensor name) draws model 0's
mask, then model 1's, ... (a model of density 1 draws nothing). The same recipe therefore gives
the same bytes whatever the tensor order, and mergekit 0.1.5 gives the same masks when its global
torch generator is seeded with `tensor_seed(seed, name)` before that tensor (it draws with
`torch.bernoulli` in float32, or in bfloat16 for bfloat16 tensors, exactly as here).

This file is an example third-party plugin: it imports only prefkit's public API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

if TYPE_CHECKING:  # torch is imported inside the functions: the CLI starts without it
    import torch

from prefkit.api import MergeInfo, Params, TensorMethod, hookimpl
from prefkit.ops import agrees, task_vectors_


class DareParams(Params):
    normalize: bool = Field(False, description="Divide by the weights (of the agreeing models, "
                            "for dare_ties).")
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    rescale: bool = Field(True, description="Rescale the kept entries (false: only drop).")
    rescale_by: Literal["l1_norm", "density"] = Field(
        "l1_norm", description="l1_norm: restore each task vector's L1 norm (mergekit); "
        "density: divide by density (the paper; unbiased).")
    seed: int = Field(0, description="Seed of the drop masks.")
    int8_mask: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")


class DareModelParams(Params):
    weight: float = Field(description="Weight of this model's task vector.")
    density: float = Field(1.0, ge=0.0, le=1.0, description="Probability of keeping an entry.")


def tensor_seed(seed: int, name: str) -> int:
    """The seed of one tensor's masks: stable across runs, platforms and tensor orders."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator,
                     rescale_by: str | None, eps: float = 1e-7) -> torch.Tensor:
    """One task vector after DARE, in its own dtype (`rescale_by` None: drop only)."""
    import torch

    if density >= 1:
        return delta
    # torch.bernoulli has no float16 kernel on CPU: draw in float32 (bfloat16 draws natively)
    work = torch.bfloat16 if delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full(delta.shape, density, dtype=work), generator=generator)
    kept = delta.to(work) * mask
    if rescale_by == "density" and density > 0:
        kept /= density
    elif rescale_by == "l1_norm":
        before, after = delta.to(work).abs().sum(), kept.abs().sum()
        if before >= eps and after >= eps:
            kept *= before / after
    return kept.to(delta.dtype)


class _Dare(TensorMethod):
    reference_url = "https://arxiv.org/abs/2311.03099"
    Params = DareParams
    ModelParams = DareModelParams
    elect_signs = False

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor,
        params: DareParams,
        model_params: Sequence[DareModelParams],
        info: MergeInfo,
    ) -> torch.Tensor:
        import torch

        generator = torch.Generator().manual_seed(tensor_seed(params.seed, info.name))
        rescale_by = params.rescale_by if params.rescale else None
        # masks are drawn model by model, in recipe order, from this tensor's generator
        deltas = torch.stack([drop_and_rescale(delta, mp.density, generator, rescale_by)
                              for delta, mp in zip(task_vectors_(tensors, base), model_params)])
        weights = torch.tensor([mp.weight for mp in model_params], dtype=deltas.dtype)
        weights = weights.reshape(-1, *([1] * base.dim()))
        deltas.mul_(weights)
        if self.elect_signs:
            agree = agrees(deltas, deltas.sum(dim=0) >= 0)  # zeros never agree
            mixed = (deltas * agree).sum(dim=0)
            divisor = (weights * agree).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = deltas.sum(dim=0)
            divisor = weights.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if params.normalize:
            mixed /= divisor
        if params.lambda_ != 1:
            mixed *= params.lambda_
        return (base + mixed).to(base.dtype)


class DareLinear(_Dare):
    name = "dare_linear"
    summary = "DARE: drop task-vector entries at random, rescale, add the weighted sum."


class DareTies(_Dare):
    name = "dare_ties"
    summary = "DARE, then TIES sign election: average only the entries that agree."
    elect_signs = True


@hookimpl
def prefkit_register_methods(register):
    register(DareLinear())
    register(DareTies())
