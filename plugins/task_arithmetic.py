"""Task arithmetic: add weighted task vectors to the base.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, https://arxiv.org/abs/2212.04089.

    τ_i = θ_i − θ_0,   merged = θ_0 + λ · Σ_i w_i τ_i   (/ Σ_i w_i with `normalize: true`)

mergekit semantics (0.1.5): `normalize` defaults to false; a weight sum below 1e-8 is not divided by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

if TYPE_CHECKING:  # `merge` takes torch tensors or numpy arrays alike (`takes_numpy`)
    import torch

from prefkit.api import MergeInfo, Params, Scale, TensorMethod, WeightParams, hookimpl
from prefkit.ops import (
    accumulator,
    cast_like,
    map_chunks,
    mul_scalar_,
    scale_,
    task_vectors_,
    weight_sum,
)


class TaskArithmeticParams(Params):
    normalize: bool = Field(False, description="Divide the weighted sum by the sum of the weights.")
    lambda_: Scale = Field(1.0, alias="lambda",
                           description="Scale of the merged task vector (finite, |λ| <= 1e6).")
    int8_mask: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")
    rescale: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")


class TaskArithmeticModelParams(WeightParams):
    """Each model's `weight` (bounded: `prefkit.api.Scale`)."""


class TaskArithmeticMethod(TensorMethod):
    name = "task_arithmetic"
    summary = "Base plus the weighted sum of task vectors, scaled by lambda."
    reference_url = "https://arxiv.org/abs/2212.04089"
    elementwise = True  # each entry is merged on its own: large tensors may come in slabs
    Params = TaskArithmeticParams
    ModelParams = TaskArithmeticModelParams

    takes_numpy = True  # on the CPU the merge runs on numpy arrays, and torch is not imported

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor,
        params: TaskArithmeticParams,
        model_params: Sequence[WeightParams],
        info: MergeInfo,
    ) -> torch.Tensor:
        # task vectors in place in the owned inputs, chunk by chunk, summed into the first buffer
        deltas = [t.reshape(-1) for t in tensors]
        weights = [p.weight for p in model_params]
        flat_base, out = base.reshape(-1), deltas[0]
        divisor = weight_sum(weights, flat_base) if params.normalize else None
        if divisor is not None and abs(float(divisor)) < 1e-8:
            divisor = None

        def merge_chunk(part: slice) -> None:
            mixed = accumulator(flat_base[part])
            vectors = task_vectors_([d[part] for d in deltas], flat_base[part])
            for delta, weight in zip(vectors, weights):
                mixed += scale_(delta, weight)
            mixed = cast_like(mixed, flat_base)
            if divisor is not None:
                mixed /= divisor
            if params.lambda_ != 1:
                mul_scalar_(mixed, params.lambda_)
            mixed += flat_base[part]
            out[part] = mixed

        map_chunks(merge_chunk, out.shape[0])
        return out.reshape(base.shape)


@hookimpl
def prefkit_register_methods(register):
    register(TaskArithmeticMethod())
