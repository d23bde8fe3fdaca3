"""Task arithmetic: add weighted task vectors to the base.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, https://arxiv.org/abs/2212.04089.

    τ_i = θ_i − θ_0,   merged = θ_0 + λ · Σ_i w_i τ_i   (/ Σ_i w_i with `normalize: true`)

mergekit semantics (0.1.5): `normalize` defaults to false; a weight sum below 1e-8 is not divided by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

if TYPE_CHECKING:  # torch is imported inside the functions: the CLI starts without it
    import torch

from prefkit.api import Params, TensorInfo, TensorMethod, WeightParams, hookimpl
from prefkit.ops import accumulator, map_chunks, scale_, task_vectors_


class TaskArithmeticParams(Params):
    normalize: bool = Field(False, description="Divide the weighted sum by the sum of the weights.")
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    int8_mask: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")
    rescale: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")


class TaskArithmeticMethod(TensorMethod):
    name = "task_arithmetic"
    summary = "Base plus the weighted sum of task vectors, scaled by lambda."
    reference_url = "https://arxiv.org/abs/2212.04089"
    elementwise = True  # each entry is merged on its own: large tensors may come in slabs
    Params = TaskArithmeticParams
    ModelParams = WeightParams

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor,
        params: TaskArithmeticParams,
        model_params: Sequence[WeightParams],
        info: TensorInfo,
    ) -> torch.Tensor:
        import torch

        # task vectors in place in the owned inputs, chunk by chunk, summed into the first buffer
        deltas = [t.reshape(-1) for t in tensors]
        weights = [p.weight for p in model_params]
        divisor = torch.tensor(weights, dtype=base.dtype).sum() if params.normalize else None
        if divisor is not None and divisor.abs() < 1e-8:
            divisor = None
        flat_base, out = base.reshape(-1), deltas[0]

        def merge_chunk(part: slice) -> None:
            mixed = accumulator(flat_base[part])
            vectors = task_vectors_([d[part] for d in deltas], flat_base[part])
            for delta, weight in zip(vectors, weights):
                mixed.add_(scale_(delta, weight))
            mixed = mixed.to(base.dtype)
            if divisor is not None:
                mixed /= divisor
            if params.lambda_ != 1:
                mixed *= params.lambda_
            out[part] = mixed.add_(flat_base[part])

        map_chunks(merge_chunk, out.numel())
        return out.reshape(base.shape)


@hookimpl
def prefkit_register_methods(register):
    register(TaskArithmeticMethod())
