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

if TYPE_CHECKING:  # torch is imported inside the functions: the CLI starts without it
    import torch

from prefkit.api import Params, TensorInfo, TensorMethod, WeightParams, hookimpl
from prefkit.ops import map_chunks


class LinearParams(Params):
    normalize: bool = Field(True, description="Divide by the sum of the weights.")


class LinearMethod(TensorMethod):
    name = "linear"
    aliases = ("averaging",)
    summary = "Weighted average of the models' weights (model soup)."
    reference_url = "https://arxiv.org/abs/2203.05482"
    base = "input"
    elementwise = True  # each entry is merged on its own: large tensors may come in slabs
    Params = LinearParams
    ModelParams = WeightParams

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor | None,
        params: LinearParams,
        model_params: Sequence[WeightParams],
        info: TensorInfo,
    ) -> torch.Tensor:
        import torch

        first = tensors[0]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        weights = torch.tensor([p.weight for p in model_params], dtype=dtype)
        flats = [t.reshape(-1) for t in tensors]
        out = flats[0]  # owned input buffer: the result is written over it, chunk by chunk

        def merge_chunk(part: slice) -> None:
            result = torch.zeros(part.stop - part.start, dtype=dtype, device=out.device)
            for tensor, weight in zip(flats, weights):
                result.addcmul_(tensor[part], weight)
            if params.normalize:
                result.div_(weights.sum())
            out[part] = result

        map_chunks(merge_chunk, out.numel())
        return out.reshape(first.shape)


@hookimpl
def prefkit_register_methods(register):
    register(LinearMethod())
