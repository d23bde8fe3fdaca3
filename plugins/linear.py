"""Linear merging (model soup / weighted averaging).

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022, https://arxiv.org/abs/2203.05482.

    merged = Σ_i w_i θ_i / Σ_i w_i        (the division only with `normalize: true`, the default)

mergekit semantics: computed in float32 (float64 for float64 inputs) and cast back; a `base_model`
that is not listed under `models` is merged as one more input whose weight comes from the top-level
`parameters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

if TYPE_CHECKING:  # `merge` takes torch tensors or numpy arrays alike (`takes_numpy`)
    import torch

from prefkit.api import MergeInfo, Params, TensorMethod, WeightParams, hookimpl
from prefkit.ops import accumulator, add_product_, fused_multiply_add, map_chunks, weight_sum


class LinearParams(Params):
    normalize: bool = Field(True, description="Divide by the sum of the weights.")


class LinearModelParams(WeightParams):
    """Each model's `weight` (bounded: `prefkit.api.Scale`)."""


class LinearMethod(TensorMethod):
    name = "linear"
    aliases = ("averaging",)
    summary = "Weighted average of the models' weights (model soup)."
    reference_url = "https://arxiv.org/abs/2203.05482"
    base = "input"
    elementwise = True  # each entry is merged on its own: large tensors may come in slabs
    Params = LinearParams
    ModelParams = LinearModelParams

    @property
    def takes_numpy(self) -> bool:
        """On the CPU the merge runs on numpy arrays, and torch is not imported, when the C
        extension gives numpy the fused multiply-add of torch's (and mergekit's) addcmul_."""
        return fused_multiply_add() is not None

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor | None,
        params: LinearParams,
        model_params: Sequence[WeightParams],
        info: MergeInfo,
    ) -> torch.Tensor:
        flats = [t.reshape(-1) for t in tensors]
        weights = [p.weight for p in model_params]
        out = flats[0]  # owned input buffer: the result is written over it, chunk by chunk
        divisor = weight_sum(weights, accumulator(out[:0])) if params.normalize else None

        def merge_chunk(part: slice) -> None:
            result = accumulator(out[part])  # float32 (float64 for float64 inputs)
            for tensor, weight in zip(flats, weights):
                add_product_(result, tensor[part], weight)
            if divisor is not None:
                result /= divisor
            out[part] = result

        map_chunks(merge_chunk, out.shape[0])
        return out.reshape(tensors[0].shape)


@hookimpl
def prefkit_register_methods(register):
    register(LinearMethod())
