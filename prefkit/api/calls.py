"""What one call of a tensor method gets, by concern: `TensorInfo` says which tensor (planned once,
before any read), `SlabRows` which part of it (a slab of rows, for `elementwise` methods merging a
large tensor in pieces) and `MergeInfo` bundles them with the run's state for one call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prefkit.api.params import Params


@dataclass(frozen=True)
class TensorInfo:
    """Which tensor: planned once per output tensor by the resolver, before any read.

    Attributes:
        name: the output tensor name, e.g. ``roberta.encoder.layer.3.attention.self.query.weight``.
        layer: index of the transformer block the tensor belongs to, or None (embeddings, heads).
        t: the tensor's position in the layer stack in [0, 1] (mergekit's gradient coordinate:
            layer / (num_layers - 1); 0 for tensors outside the layers).
        models: the labels of the input models, in recipe order.
    """

    name: str
    layer: int | None
    t: float
    models: tuple[str, ...]


@dataclass(frozen=True)
class SlabRows:
    """One slab of a tensor that an `elementwise` method merges in pieces.

    Attributes:
        rows: the rows ``(start, stop)`` of the tensor's first dimension this call gets.
        tensor_state: what `prepare_tensor` returned for the whole tensor (None without one).
    """

    rows: tuple[int, int]
    tensor_state: Any = None


@dataclass(frozen=True)
class MergeInfo:
    """What one call of `merge` (or `prepare_tensor`, or a pre-pass item) gets besides the data.

    Attributes:
        tensor: which tensor (`TensorInfo`).
        state: the run's state: what the method's `prepare` returned, or a solver's solution
            (None when there is neither).
        slab: the slab of rows this call gets; None: the whole tensor.

    `name`, `layer`, `t` and `models` read the tensor's; `rows` and `tensor_state` the slab's
    (None for a whole tensor).
    """

    tensor: TensorInfo
    state: Any = None
    slab: SlabRows | None = None

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def layer(self) -> int | None:
        return self.tensor.layer

    @property
    def t(self) -> float:
        return self.tensor.t

    @property
    def models(self) -> tuple[str, ...]:
        return self.tensor.models

    @property
    def rows(self) -> tuple[int, int] | None:
        return None if self.slab is None else self.slab.rows

    @property
    def tensor_state(self) -> Any:
        return None if self.slab is None else self.slab.tensor_state


@dataclass(frozen=True)
class ScanItem:
    """One tensor group seen by a pre-pass (`TensorMethod.prepare`)."""

    info: MergeInfo
    tensors: Sequence[Any]  # torch.Tensor, one per model, already in the compute dtype
    base: Any  # torch.Tensor or None
    model_params: Sequence[Params]
    left: int | None = None  # entries per model the scan yields after this item (None: unknown)


Scan = Callable[[], Iterator[ScanItem]]
