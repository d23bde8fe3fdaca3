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
    CHUNK,
    MagnitudeSelection,
    accumulator,
    agrees,
    chunks,
    elected_positive,
    kth_largest_magnitude,
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
    elementwise = True  # after the cut-offs (prepare_tensor) every entry is merged on its own
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
        if params.trim != "global":
            return None
        selections: list[MagnitudeSelection] = []
        densities: list[float] = []
        for item in scan():  # round 1: high-bit histograms of every |τ_i|
            if not selections:
                selections = [MagnitudeSelection() for _ in item.tensors]
                densities = [mp.density for mp in item.model_params]
            for selection, tensor in zip(selections, item.tensors):
                selection.add(tensor.sub_(item.base))
        ks = [_keep_count(d, s.count) for d, s in zip(densities, selections)]
        cuts = _select(selections, ks, lambda: ((item.tensors, item.base) for item in scan()))
        return GlobalThresholds([c and c.threshold for c in cuts], [c.ties if c else 0 for c in cuts])

    def prepare_tensor(self, scan: Scan, *, params: TiesParams,
                       model_params: Sequence[TiesModelParams], info: TensorInfo) -> _Slabbed | None:
        """A tensor merged in slabs: the cut-offs of the whole tensor (per-tensor trimming: two
        histogram passes over its slabs) and, with `rescale`, the L1 norms (one more pass)."""
        if params.trim == "global":
            if not params.rescale:
                return None  # the global cut-offs need nothing from this tensor
            cuts = [None if t is None else _Cut(t, left)
                    for t, left in zip(info.state.thresholds, info.state.ties_left)]
        else:
            selections = [MagnitudeSelection() for _ in model_params]
            for item in scan():
                for selection, tensor in zip(selections, item.tensors):
                    selection.add(tensor.sub_(item.base))
            ks = [_keep_count(mp.density, s.count) for mp, s in zip(model_params, selections)]
            cuts = _select(selections, ks, lambda: ((item.tensors, item.base) for item in scan()))
        ratios = [None] * len(cuts)
        if params.rescale:
            norms = [_L1(cut) for cut in cuts]
            for item in scan():
                dtype = item.base.dtype
                for norm, tensor in zip(norms, item.tensors):
                    norm.add(tensor.sub_(item.base))
            ratios = [norm.ratio(dtype) for norm in norms]
        return _Slabbed(cuts, ratios)

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
        tensor_vectors = task_vectors_(tensors, base)
        if info.tensor_state is not None:  # a slab: cut-offs (and their ties) span the tensor
            cuts, ratios = info.tensor_state.cuts, info.tensor_state.ratios
        else:
            cuts = [self._cut(d, i, mp, params, info)
                    for i, (d, mp) in enumerate(zip(tensor_vectors, model_params))]
            ratios = [_L1.of(d, cut) if params.rescale else None
                      for d, cut in zip(tensor_vectors, cuts)]
        deltas = [d.reshape(-1) for d in tensor_vectors]
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


@dataclass
class _Slabbed:
    """What `prepare_tensor` found for a tensor merged in slabs: per model, the cut (its ties
    budget is spent slab by slab, in row order) and the rescale ratio."""

    cuts: list[_Cut | None]
    ratios: list[torch.Tensor | None]


class _L1:
    """mergekit's `rescale` ratio ‖τ‖₁ / ‖trim(τ)‖₁ (None when either is below eps).

    Summed the same way whether the tensor comes whole or in slabs, so both give the same bits:
    each row (first dimension) in float64 with numpy's pairwise sum, rows added in order.
    """

    def __init__(self, cut: _Cut | None):
        self.probe = None if cut is None else _Cut(cut.threshold, cut.ties)  # its own ties budget
        self.before = self.after = 0.0

    @classmethod
    def of(cls, delta: torch.Tensor, cut: _Cut | None) -> torch.Tensor | None:
        norm = cls(cut)
        norm.add(delta)
        return norm.ratio(delta.dtype)

    def add(self, delta: torch.Tensor) -> None:
        if self.probe is None:
            return
        rows = delta.reshape(delta.shape[0] if delta.dim() else 1, -1)
        for part in _row_chunks(rows):
            mag = part.abs()
            self.before = _add_rows(self.before, mag)
            self.after = _add_rows(self.after, mag.mul_(self.probe.mask(part)))

    def ratio(self, dtype, eps: float = 1e-7) -> torch.Tensor | None:
        import torch

        if self.probe is None or self.before < eps or self.after < eps:
            return None
        return torch.tensor(self.before / self.after, dtype=dtype)


def _row_chunks(rows: torch.Tensor):
    step = max(1, CHUNK // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        yield rows[start:start + step]


def _add_rows(total: float, mag: torch.Tensor) -> float:
    """`total` plus each row's float64 sum, in row order (deterministic: numpy, one thread)."""
    import numpy as np

    sums = mag.double().cpu().numpy().sum(axis=1)
    return float(np.cumsum(np.concatenate([[total], sums]))[-1])


def _select(selections: list[MagnitudeSelection], ks: list[int | None], rescan) -> list[_Cut | None]:
    """Each model's cut from round-1 selections and keep counts (None: keep all); `rescan()`
    yields (tensors, base) again for round 2, which runs only if some model needs it."""
    cuts: list[_Cut | None] = [None if k is None else _Cut(float("inf"), 0) for k in ks]
    todo = [i for i, k in enumerate(ks) if k]
    again = [i for i in todo if selections[i].choose(ks[i])]
    if again:
        for tensors, base in rescan():
            for i in again:
                selections[i].add(tensors[i].sub_(base))
    for i in todo:
        threshold, greater, _ = selections[i].result()
        cuts[i] = _Cut(threshold, ks[i] - greater)
    return cuts


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
