"""The method contract: what every method declares (`Method`), and the tensor method the streaming
executor calls (`TensorMethod`)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from prefkit.api.calls import MergeInfo, Scan
from prefkit.api.params import NoParams, Params


class Method(abc.ABC):
    """What every method declares, whatever its kind: `prefkit methods` lists these and the recipe
    checks use them (see TensorMethod for their meaning)."""

    kind: ClassVar[str]
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    reference_url: ClassVar[str] = ""
    base: ClassVar[Literal["required", "input"]] = "required"
    Params: ClassVar[type[Params]] = NoParams
    ModelParams: ClassVar[type[Params]] = NoParams
    param_aliases: ClassVar[dict[str, str]] = {}


class TensorMethod(Method):
    """A method merged tensor by tensor by the streaming executor.

    Class attributes:
        name: the recipe name (`merge_method:`), snake_case.
        aliases: other accepted names (e.g. ``averaging`` for ``linear``).
        summary: one line for `prefkit methods`.
        reference_url: the paper.
        base: "required" (task-vector methods), or "input" (mergekit's linear: a `base_model`
            that is not among `models` is merged as one more input).
        Params: parameters shared by all models (top-level `parameters:` only).
        ModelParams: parameters with a value per model (per-model `parameters:` or top level).
        param_aliases: accepted alternative parameter names, mapped to the canonical ones.
        elementwise: opt in to slab merging (see below); False: `merge` always gets whole tensors.
        takes_numpy: `merge` also takes numpy arrays, and returns the same bits for them as for
            torch tensors (see below); `numpy_dtypes`: the compute dtypes it takes them in.

    Slabs (constant memory): when `elementwise` is True, the executor may cut a tensor whose
    inputs outgrow its memory budget (e.g. a 50265×768 embedding) into slabs of consecutive rows
    and call `merge` once per slab, in row order, with `info.rows` set; the written result must
    equal the whole tensor's merge. A method whose result at an entry depends only on the inputs
    at that entry qualifies at once. One that needs a statistic of the whole tensor (TIES's
    per-tensor top-k) computes it in `prepare_tensor`, which is called before the first slab.
    Buffers are then reused: slab tensors (and `prepare`'s scan items) are valid only until
    the call returns (or the next item is requested).

    numpy (no torch import): importing torch takes 1-2.5 s, more than a linear merge of a
    roberta-base set. When `takes_numpy` is True and the merge runs on the CPU from safetensors
    inputs, the executor passes numpy arrays (in the compute dtypes of `numpy_dtypes`: float16/
    32/64 by default; bfloat16 inputs arrive converted to a float32 compute dtype, and a bfloat16
    compute dtype keeps torch) and never imports torch.
    `prefkit.ops`' helpers up to `weight_sum` work on either, with the same bits; a method that
    does its own arithmetic must follow torch's scalar rules (`ops.mul_scalar_`).
    """

    kind: ClassVar[str] = "tensor"
    elementwise: ClassVar[bool] = False
    takes_numpy: ClassVar[bool] = False
    numpy_dtypes: ClassVar[frozenset[str]] = frozenset({"float16", "float32", "float64"})

    def prepare(self, scan: Scan, params: Params) -> Any:
        """Optional pre-pass over every tensor group before the merge (e.g. global TIES trimming).

        `scan()` re-reads the inputs and yields one `ScanItem` per tensor, in plan order; nothing
        is kept in memory unless the method keeps it. Whatever this returns reaches `merge` as
        `info.state`. The default needs no pre-pass. For an `elementwise` method the scan yields
        a large tensor as several slabs of rows, in order (`info.rows` says which). Each item's
        `left` counts the entries still to come after it, so a pass can plan for the whole; a
        pass that needs only the first items may stop iterating early.
        """
        return None

    def prepare_tensor(self, scan: Scan, *, params: Params, model_params: Sequence[Params],
                       info: MergeInfo) -> Any:
        """Optional pre-pass over one tensor that an `elementwise` method merges in slabs.

        Called before the tensor's first slab is merged; `scan()` re-reads the tensor's slabs
        (one `ScanItem` each, in row order, fresh buffers every time: they may be modified).
        Whatever this returns reaches every slab's `merge` as `info.tensor_state`. The default
        needs none; it is not called for tensors merged whole.
        """
        return None

    @abc.abstractmethod
    def merge(
        self,
        tensors: Sequence[Any],
        *,
        base: Any,
        params: Params,
        model_params: Sequence[Params],
        info: MergeInfo,
    ) -> Any:
        """Merge one tensor across models.

        The executor reads fresh buffers for every call: `tensors` belong to this call and may be
        overwritten as scratch space (the built-ins turn them into task vectors in place, which
        keeps peak memory near (models + 1) × the tensor). `base` must not be modified.

        Args:
            tensors: one tensor per model (recipe order), all of one shape, in the compute dtype.
            base: the base model's tensor (same shape and dtype) or None.
            params: the shared parameters resolved for this tensor.
            model_params: per-model parameters resolved for this tensor, one per model.
            info: the tensor's name, layer, t and the pre-pass state.

        Returns:
            The merged tensor, same shape; the executor casts it to the output dtype.
        """
