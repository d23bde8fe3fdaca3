"""TIES-Merging: trim, elect sign, disjoint merge.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023,
https://arxiv.org/abs/2306.01708.

1. Trim: keep the k = max(1, ⌊density·n⌋) largest-magnitude entries of each task vector
   τ_i = θ_i − θ_0, either per tensor (`trim: tensor`, mergekit's behaviour) or over the whole task
   vector (`trim: global`, the paper's). Ties at the cut-off keep the lowest flat indices first
   (tensors taken in sorted name order for `global`).
2. Elect: per entry, the sign of Σ_i w_i τ̂_i (`consensus: sum`, ≥ 0 elects +) or the majority of
   signs (`consensus: count`).
3. Disjoint merge: θ_0 + λ · Σ_i w_i τ̂_i [agrees] / Σ_i w_i [agrees]  (the division with `normalize`).

Global trimming streams: a pre-pass histograms the float32 bit patterns of |τ_i| (monotonic for
non-negative floats) in two rounds, 2^15 high-bit bins then 2^16 low-bit bins inside the bin that
holds the k-th largest entry, which gives each model's exact threshold without holding a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field

if TYPE_CHECKING:  # torch is imported inside the functions: the CLI starts without it
    import torch

from prefkit.api import Params, Scan, TensorInfo, TensorMethod, hookimpl
from prefkit.ops import (
    accumulator,
    agrees,
    bin_of_kth_largest,
    bits_to_float,
    chunks,
    elected_positive,
    high_histogram,
    kth_largest_magnitude,
    low_histogram,
    magnitude_bits,
    scale_,
    task_vectors_,
    threshold_mask,
)


class TiesParams(Params):
    normalize: bool = Field(True, description="Divide by the weights of the agreeing models.")
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    consensus: Literal["sum", "count"] = Field("sum", description="Sign election rule.")
    trim: Literal["tensor", "global"] = Field(
        "tensor", description="Top-k per tensor (mergekit) or over each whole task vector (paper)."
    )
    rescale: bool = Field(False, description="Rescale trimmed task vectors to their L1 norm.")
    int8_mask: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")


class TiesModelParams(Params):
    weight: float = Field(description="Weight of this model's task vector.")
    density: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of entries kept by trimming.")


@dataclass
class GlobalThresholds:
    """Per model: the exact k-th largest |τ| (None: keep all) and how many entries equal to it
    may still be kept (consumed in merge order)."""

    thresholds: list[float | None]
    ties_left: list[int] = field(default_factory=list)


class TiesMethod(TensorMethod):
    name = "ties"
    summary = "TIES: trim task vectors to top-k, elect signs, average the agreeing entries."
    reference_url = "https://arxiv.org/abs/2306.01708"
    Params = TiesParams
    ModelParams = TiesModelParams
    param_aliases = {"k": "density", "lambda_merge": "lambda"}

    def check(self, resolved: Sequence[tuple[TensorInfo, TiesParams, Sequence[TiesModelParams]]]):
        """Global trimming needs one `trim` and one density per model over the whole vector."""
        trims = {params.trim for _, params, _ in resolved}
        if len(trims) > 1:
            raise ValueError("trim must be one value for every tensor (no filters or gradients)")
        if trims == {"global"}:
            densities = {tuple(mp.density for mp in mps) for _, _, mps in resolved}
            if len(densities) > 1:
                raise ValueError(
                    "with trim: global, density must be one value per model for the whole task "
                    "vector (no filters or gradients)"
                )

    def prepare(self, scan: Scan, params: TiesParams) -> GlobalThresholds | None:
        import torch

        if params.trim != "global":
            return None
        high: list[torch.Tensor] = []
        counts: list[int] = []
        densities: list[float] = []
        for item in scan():  # round 1: high-bit histograms of every |τ_i|
            if not high:
                high = [torch.zeros(1 << 15, dtype=torch.int64) for _ in item.tensors]
                counts = [0] * len(item.tensors)
                densities = [mp.density for mp in item.model_params]
            for i, tensor in enumerate(item.tensors):
                delta = tensor.sub_(item.base).reshape(-1)
                for part in chunks(delta.numel()):
                    high[i] += high_histogram(magnitude_bits(delta[part]))
                counts[i] += delta.numel()
        ks = [_keep_count(d, n) for d, n in zip(densities, counts)]
        bins = [bin_of_kth_largest(h, k) if k else None for h, k in zip(high, ks)]
        low = [torch.zeros(1 << 16, dtype=torch.int64) for _ in ks]
        if any(bins):
            for item in scan():  # round 2: low bits inside the bin that holds the k-th largest
                for i, tensor in enumerate(item.tensors):
                    if bins[i] is None:
                        continue
                    delta = tensor.sub_(item.base).reshape(-1)
                    for part in chunks(delta.numel()):
                        low[i] += low_histogram(magnitude_bits(delta[part]), bins[i][0])
        state = GlobalThresholds([], [])
        for k, found, histogram in zip(ks, bins, low):
            if k is None:  # density 1: keep everything
                state.thresholds.append(None)
                state.ties_left.append(0)
            elif k == 0:  # density 0: keep nothing
                state.thresholds.append(float("inf"))
                state.ties_left.append(0)
            else:
                high_bin, above = found
                low_bits, greater = bin_of_kth_largest(histogram, k, above)
                state.thresholds.append(bits_to_float((high_bin << 16) | low_bits))
                state.ties_left.append(k - greater)
        return state

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor,
        params: TiesParams,
        model_params: Sequence[TiesModelParams],
        info: TensorInfo,
    ) -> torch.Tensor:
        # Task vectors in place in the owned input buffers; after the per-model cut-offs are
        # known, everything is elementwise, so it runs chunk by chunk and the result is written
        # over the first input's buffer: peak memory stays at the inputs plus a few chunks.
        deltas = [t.reshape(-1) for t in task_vectors_(tensors, base)]
        cuts = [self._cut(d, i, mp, params, info) for i, (d, mp) in enumerate(zip(deltas, model_params))]
        ratios = [_rescale_ratio(d, cut) if params.rescale else None for d, cut in zip(deltas, cuts)]
        flat_base, out = base.reshape(-1), deltas[0]
        for part in chunks(out.numel()):
            parts = [d[part] for d in deltas]
            for delta, cut, ratio, mp in zip(parts, cuts, ratios, model_params):
                if cut is not None:
                    delta.mul_(cut.mask(delta))
                if ratio is not None:
                    delta.mul_(ratio)
                scale_(delta, mp.weight)
            out[part] = self._disjoint_merge(parts, flat_base[part], params, model_params)
        if info.state is not None:  # spend the global ties budget in merge order
            info.state.ties_left[:] = [c.ties if c is not None else 0 for c in cuts]
        return out.reshape(base.shape)

    @staticmethod
    def _cut(delta, i, mp: TiesModelParams, params: TiesParams, info: TensorInfo) -> _Cut | None:
        if params.trim == "global":
            threshold = info.state.thresholds[i]
            return None if threshold is None else _Cut(threshold, info.state.ties_left[i])
        k = _keep_count(mp.density, delta.numel())
        if k is None:
            return None
        if k == 0:
            return _Cut(float("inf"), 0)
        threshold, greater = kth_largest_magnitude(delta, k)
        return _Cut(threshold, k - greater)

    @staticmethod
    def _disjoint_merge(parts, base, params: TiesParams, model_params) -> torch.Tensor:
        """Elect signs and average the agreeing weighted task vectors (one chunk)."""
        import torch

        positive = elected_positive(parts, params.consensus)
        mixed = accumulator(base)
        divisor = accumulator(base) if params.normalize else None
        for delta, mp in zip(parts, model_params):
            agree = agrees(delta, positive)
            mixed.add_(delta.mul_(agree))
            if divisor is not None:
                # the weight rounded to the compute dtype, as a weight tensor would be
                divisor.add_(agree, alpha=float(torch.tensor(mp.weight, dtype=base.dtype)))
        mixed = mixed.to(base.dtype)
        if divisor is not None:
            divisor = divisor.to(base.dtype)
            divisor[divisor == 0] = 1
            mixed /= divisor
        if params.lambda_ != 1:
            mixed *= params.lambda_
        return mixed.add_(base)


@dataclass
class _Cut:
    """Keep |τ| > threshold, plus the next `ties` entries equal to it (in flat order)."""

    threshold: float
    ties: int

    def mask(self, delta: torch.Tensor) -> torch.Tensor:
        mask, taken = threshold_mask(delta, self.threshold, self.ties)
        self.ties -= taken
        return mask


def _rescale_ratio(delta: torch.Tensor, cut: _Cut | None, eps: float = 1e-7) -> torch.Tensor | None:
    """mergekit's `rescale`: ‖τ‖₁ / ‖trim(τ)‖₁ (1 when either is below eps), chunk by chunk."""
    import torch

    if cut is None:
        return None
    probe = _Cut(cut.threshold, cut.ties)
    before = after = 0.0
    for part in chunks(delta.numel()):
        mag = delta[part].abs()
        before += float(mag.sum(dtype=torch.float64))
        after += float((mag * probe.mask(delta[part])).sum(dtype=torch.float64))
    if before < eps or after < eps:
        return None
    return torch.tensor(before / after, dtype=delta.dtype)


def _keep_count(density: float, n: int) -> int | None:
    """Entries kept out of n (mergekit's rule), or None for 'all'."""
    if density >= 1:
        return None
    if density <= 0 or n == 0:
        return 0
    return max(1, int(density * n))


@hookimpl
def prefkit_register_methods(register):
    register(TiesMethod())
