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
The first round also counts the low bits of a few bins around a running prediction of that bin
(`MagnitudeSelection`'s `mixed` mode), so the second round is needed only when the prediction
missed, and then only over the tensors that came before it settled.

The plugin owns its machinery (the core never imports it), one module each:
`histograms` (float32 bit patterns and their histograms), `selection` (`MagnitudeSelection`,
the exact k-th largest |τ| of values met in pieces), `cut` (a tensor's cut-off, `MagnitudeCut`
and the trim), `fused` (whether the C loops run), `kernels` (their ctypes wrappers) and
`_kernels.c` (the loops, an optional extension built by setup.py). This module is the method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field

if TYPE_CHECKING:  # torch is imported inside the functions: the CLI starts without it
    import torch

from prefkit.api import (
    MergeInfo,
    Params,
    Scale,
    Scan,
    TensorInfo,
    TensorMethod,
    WeightParams,
    hookimpl,
)
from prefkit.ops import (
    CHUNK,
    chunks,
    disjoint_mean,
    map_chunks,
    nonzero_divisor_,
    round_to,
    scale_,
    sign_votes,
    task_vectors_,
)

from .cut import MagnitudeCut, task_vector_cut_point
from .fused import kernels_enabled, kernels_for
from .selection import MagnitudeSelection


class TiesParams(Params):
    normalize: bool = Field(True, description="Divide by the weights of the agreeing models.")
    lambda_: Scale = Field(1.0, alias="lambda",
                           description="Scale of the merged task vector (finite, |λ| <= 1e6).")
    consensus: Literal["sum", "count"] = Field("sum", description="Sign election rule.")
    trim: Literal["tensor", "global"] = Field(
        "tensor", description="Top-k per tensor (mergekit) or over each whole task vector (paper)."
    )
    rescale: bool = Field(False, description="Rescale trimmed task vectors to their L1 norm.")
    int8_mask: bool = Field(False, description="Accepted for mergekit compatibility; no effect.")


class TiesModelParams(WeightParams):
    density: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False,
                           description="Fraction of entries kept by trimming.")


@dataclass
class GlobalThresholds:
    """Per model: the exact k-th largest |τ| (None: keep all), how many entries equal to it may
    still be kept, and how many are still to come (both spent in merge order)."""

    thresholds: list[float | None]
    ties_left: list[int] = field(default_factory=list)
    equal_left: list[int] = field(default_factory=list)

    def cuts(self) -> list[MagnitudeCut | None]:
        return [None if t is None else MagnitudeCut(t, left, equal)
                for t, left, equal in zip(self.thresholds, self.ties_left, self.equal_left)]

    def spend(self, cuts: Sequence[MagnitudeCut | None]) -> None:
        self.ties_left[:] = [c.ties if c is not None else 0 for c in cuts]
        self.equal_left[:] = [c.equal if c is not None else 0 for c in cuts]


class TiesMethod(TensorMethod):
    name = "ties"
    elementwise = True  # after the cut-offs (prepare_tensor) every entry is merged on its own
    summary = "TIES: trim task vectors to top-k, elect signs, average the agreeing entries."
    reference_url = "https://arxiv.org/abs/2306.01708"
    Params = TiesParams
    ModelParams = TiesModelParams
    param_aliases = {"k": "density", "lambda_merge": "lambda"}
    numpy_dtypes = frozenset({"float32"})  # the C loops' dtype: others merge torch tensors

    @property
    def takes_numpy(self) -> bool:
        """Float32 merges run on numpy arrays, and torch is not imported, when the C loops can
        do the float32 work (`kernels_enabled`); the rest of TIES is written for both."""
        return kernels_enabled()

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
        cuts = _cuts(scan, None)
        state = GlobalThresholds([c and c.threshold for c in cuts])
        state.spend(cuts)
        return state

    def prepare_tensor(self, scan: Scan, *, params: TiesParams,
                       model_params: Sequence[TiesModelParams], info: MergeInfo) -> _Slabbed | None:
        """A tensor merged in slabs: the cut-offs of the whole tensor (per-tensor trimming: two
        histogram passes over its slabs) and, with `rescale`, the L1 norms (one more pass)."""
        if params.trim == "global":
            if not params.rescale:
                return None  # the global cut-offs need nothing from this tensor
            cuts = info.state.cuts()
        else:
            cuts = _cuts(scan, model_params)
        ratios: list[torch.Tensor | None] = [None] * len(cuts)
        if params.rescale:
            norms = [_L1(cut) for cut in cuts]
            for item in scan():
                dtype = item.base.dtype
                for norm, tensor in zip(norms, item.tensors):
                    tensor -= item.base
                    norm.add(tensor)
            ratios = [norm.ratio(dtype) for norm in norms]
        return _Slabbed(cuts, ratios)

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        base: torch.Tensor,
        params: TiesParams,
        model_params: Sequence[TiesModelParams],
        info: MergeInfo,
    ) -> torch.Tensor:
        # Task vectors in place in the owned input buffers; after the per-model cut-offs are
        # known, everything is elementwise, so it runs chunk by chunk and the result is written
        # over the first input's buffer: peak memory stays at the inputs plus a few chunks.
        if info.tensor_state is not None:  # a slab: cut-offs (and their ties) span the tensor
            vectors = task_vectors_(tensors, base)
            cuts, ratios = info.tensor_state.cuts, info.tensor_state.ratios
        elif params.trim == "global":
            vectors = task_vectors_(tensors, base)
            cuts = info.state.cuts()
            ratios = [_L1.of(v, c) if params.rescale else None for v, c in zip(vectors, cuts)]
        else:  # model by model: τ_i and its cut-off while τ_i is in the CPU's cache
            cuts = [_tensor_cut(t, base, mp.density) for t, mp in zip(tensors, model_params)]
            vectors = tensors
            ratios = [_L1.of(v, c) if params.rescale else None for v, c in zip(vectors, cuts)]
        # the weights rounded to the compute dtype, as weight tensors would be
        weights = [round_to(mp.weight, base) for mp in model_params]
        deltas = [v.reshape(-1) for v in vectors]
        flat_base, out = base.reshape(-1), deltas[0]
        # A cut that keeps some of the entries tied at its threshold and not others spends its
        # ties budget in flat order: those models are trimmed first, chunk after chunk; then
        # every chunk is independent and the rest runs on the merge's threads.
        # A cut over more than this tensor (global, or slabs) usually leaves it all its ties or
        # none: split off its share, and its trim needs no order.
        shared = info.state is not None or info.tensor_state is not None
        unordered = list(cuts)
        for i, cut in enumerate(cuts):
            if cut is not None and cut.ordered(base.dtype):
                unordered[i] = cut.split_off(deltas[i]) if shared else None
                if unordered[i] is None:  # it holds the last tie kept: trim in flat order
                    for part in chunks(out.shape[0]):
                        cut.trim_(deltas[i][part])

        def merge_chunk(part: slice) -> None:
            parts = [d[part] for d in deltas]
            for delta, cut, ratio, mp in zip(parts, unordered, ratios, model_params):
                if cut is not None:
                    cut.trim_(delta)
                if ratio is not None:
                    delta *= ratio
                scale_(delta, mp.weight)
            out[part] = _disjoint_merge(parts, flat_base[part], params, weights)

        fused = _fused_merge(deltas, flat_base, unordered, ratios, weights, params)
        map_chunks(merge_chunk if fused is None else fused, out.shape[0])
        if info.state is not None:  # spend the global ties budget in merge order
            info.state.spend(cuts)
        return out.reshape(base.shape)


def _disjoint_merge(parts, base, params: TiesParams, weights: list[float]) -> torch.Tensor:
    """Elect signs and average the agreeing weighted task vectors (one chunk)."""
    votes = sign_votes(parts, params.consensus)
    mixed, divisor = disjoint_mean(parts, votes, weights if params.normalize else None)
    mixed = mixed.to(base.dtype)
    if divisor is not None:
        mixed /= nonzero_divisor_(divisor.to(base.dtype))
    if params.lambda_ != 1:
        mixed *= params.lambda_
    return mixed.add_(base)


def _fused_merge(deltas, base, cuts, ratios, weights, params: TiesParams):
    """`merge_chunk` as fused C loops (`kernels`, same bits) for float32 tensors on the CPU
    (`cuts`: order-free ones); None where they do not apply."""
    fused = kernels_for(base, *deltas)
    if fused is None:
        return None
    merge = fused.TiesChunk(
        [float("-inf") if c is None else c.shrink_bound(base.dtype) for c in cuts],
        [1.0 if r is None else float(r) for r in ratios], weights,
        count=params.consensus == "count", normalize=params.normalize, lambda_=params.lambda_)

    def merge_chunk(part: slice) -> None:
        merge([d[part] for d in deltas], base[part], out=deltas[0][part])

    return merge_chunk


@dataclass
class _Slabbed:
    """What `prepare_tensor` found for a tensor merged in slabs: per model, the cut (its ties
    budget is spent slab by slab, in row order) and the rescale ratio."""

    cuts: list[MagnitudeCut | None]
    ratios: list[torch.Tensor | None]


def _tensor_cut(tensor: torch.Tensor, base: torch.Tensor, density: float) -> MagnitudeCut | None:
    """Per-tensor trimming of a whole tensor: `tensor -= base` (in place: τ), and the cut that
    keeps its k largest |τ| (None: keep all)."""
    k = _keep_count(density, math.prod(tensor.shape))
    if not k:
        tensor -= base
        return None if k is None else MagnitudeCut.nothing()
    threshold, greater, equal = task_vector_cut_point(tensor, base, k)
    return MagnitudeCut(threshold, k - greater, equal)


def _cuts(scan: Scan, model_params: Sequence[TiesModelParams] | None) -> list[MagnitudeCut | None]:
    """Each model's cut over everything `scan()` yields (τ_i = tensor − base): the whole task
    vector (`model_params` None: densities from the items) or one tensor's slabs. Two passes
    over the inputs at most; the second only for models with more than a few values."""
    selections: list[MagnitudeSelection] = []
    densities: list[float] = []
    for item in scan():
        if not selections:
            densities = [mp.density for mp in (model_params or item.model_params)]
            # one tensor's slabs share a distribution: the first predicts the cut-off (and round
            # 1 keeps what lies near it); a whole task vector's tensors do not (`mixed`: the
            # prediction follows what was counted so far)
            per_tensor = model_params is not None
            total = None if item.left is None else math.prod(item.tensors[0].shape) + item.left
            selections = [MagnitudeSelection(top_fraction=d, streamed=per_tensor,
                                             mixed=not per_tensor, total=total)
                          for d in densities]
        for selection, tensor in zip(selections, item.tensors):
            selection.add_task_vector(tensor, item.base)
    ks = [_keep_count(d, s.count) for d, s in zip(densities, selections)]
    again = [i for i, k in enumerate(ks) if k and selections[i].choose(k)]
    if again:  # the second round, over the first `rescan` items where that is all it needs
        wanted = [selections[i].rescan for i in again]
        items = None if None in wanted else max(wanted)
        for n, item in enumerate(scan()):
            if n == items:
                break
            for i in again:
                item.tensors[i] -= item.base
                selections[i].add(item.tensors[i])
    return [None if k is None else MagnitudeCut.keep(s, k) if k else MagnitudeCut.nothing()
            for k, s in zip(ks, selections)]


class _L1:
    """mergekit's `rescale` ratio ‖τ‖₁ / ‖trim(τ)‖₁ (None when either is below eps).

    Summed the same way whether the tensor comes whole or in slabs, so both give the same bits:
    each row (first dimension) in float64 with numpy's pairwise sum, rows added in order.
    """

    def __init__(self, cut: MagnitudeCut | None):
        self.probe = None if cut is None else cut.copy()  # its own ties budget
        self.before = self.after = 0.0

    @classmethod
    def of(cls, delta: torch.Tensor, cut: MagnitudeCut | None) -> torch.Tensor | None:
        norm = cls(cut)
        norm.add(delta)
        return norm.ratio(delta.dtype)

    def add(self, delta: torch.Tensor) -> None:
        if self.probe is None:
            return
        rows = delta.reshape(delta.shape[0] if delta.ndim else 1, -1)
        for part in _row_chunks(rows):
            mag = abs(part)
            self.before = _add_rows(self.before, mag)
            mag *= self.probe.mask(part)
            self.after = _add_rows(self.after, mag)

    def ratio(self, dtype, eps: float = 1e-7) -> torch.Tensor | None:
        """The ratio in `dtype` (torch's: a 0-dim tensor; numpy's: a scalar), or None."""
        if self.probe is None or self.before < eps or self.after < eps:
            return None
        if hasattr(dtype, "type"):  # a numpy dtype
            return dtype.type(self.before / self.after)
        import torch

        return torch.tensor(self.before / self.after, dtype=dtype)


def _row_chunks(rows: torch.Tensor):
    step = max(1, CHUNK // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        yield rows[start:start + step]


def _add_rows(total: float, mag: torch.Tensor) -> float:
    """`total` plus each row's float64 sum, in row order (deterministic: numpy, one thread)."""
    import numpy as np

    wide = mag.astype(np.float64) if isinstance(mag, np.ndarray) else mag.double().cpu().numpy()
    sums = wide.sum(axis=1)
    return float(np.cumsum(np.concatenate([[total], sums]))[-1])


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
