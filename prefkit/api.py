"""What plugins implement. Plugins import only from here (and `prefkit.errors`).

A tensor method is a pure function of one tensor name across the input models::

    class MyParams(Params):
        scale: float = 1.0

    class MyMethod(TensorMethod):
        name = "my_method"
        summary = "One line shown by `prefkit methods`."
        reference_url = "https://arxiv.org/abs/..."
        Params = MyParams
        ModelParams = WeightParams

        def merge(self, tensors, *, base, params, model_params, info):
            ...

    @hookimpl
    def prefkit_register_methods(register):
        register(MyMethod())
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pluggy
from pydantic import BaseModel, ConfigDict, Field

hookimpl = pluggy.HookimplMarker("prefkit")


class Params(BaseModel):
    """Base class of every method's parameter models: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoParams(Params):
    """For methods that take no parameters of a kind."""


class WeightParams(Params):
    """The per-model parameter every weighted method shares."""

    weight: float = Field(description="Weight of this model's tensor (or task vector).")


@dataclass(frozen=True)
class TensorInfo:
    """Names the tensor being merged, so per-layer behaviour is possible.

    Attributes:
        name: the output tensor name, e.g. ``roberta.encoder.layer.3.attention.self.query.weight``.
        layer: index of the transformer block the tensor belongs to, or None (embeddings, heads).
        t: the tensor's position in the layer stack in [0, 1] (mergekit's gradient coordinate:
            layer / (num_layers - 1); 0 for tensors outside the layers).
        models: the labels of the input models, in recipe order.
        state: what the method's `prepare` returned (None when it has no pre-pass).
        rows: for an `elementwise` method merging a large tensor in slabs, the rows
            ``(start, stop)`` of the first dimension this call gets; None: the whole tensor.
        tensor_state: what `prepare_tensor` returned for this tensor (slabs only), else None.
    """

    name: str
    layer: int | None
    t: float
    models: tuple[str, ...]
    state: Any = None
    rows: tuple[int, int] | None = None
    tensor_state: Any = None


@dataclass(frozen=True)
class ScanItem:
    """One tensor group seen by a pre-pass (`TensorMethod.prepare`)."""

    info: TensorInfo
    tensors: Sequence[Any]  # torch.Tensor, one per model, already in the compute dtype
    base: Any  # torch.Tensor or None
    model_params: Sequence[Params]
    left: int | None = None  # entries per model the scan yields after this item (None: unknown)


Scan = Callable[[], Iterator[ScanItem]]


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
                       info: TensorInfo) -> Any:
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
        info: TensorInfo,
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


class TrainSettings(Params):
    """The `train:` block every trainer method accepts (methods subclass it to add their own).

    One optimiser step draws one batch of every task (tasks interleaved step by step), computes
    the per-task losses L_i and updates with the method's task weights: θ ← θ − lr·Σ α_i ∇L_i.
    """

    steps: int | None = Field(None, ge=1, description="Optimiser steps (default 100 unless epochs).")
    epochs: float | None = Field(None, gt=0, description="Instead of steps: passes over the largest "
                                 "task's train split (smaller tasks cycle).")
    batch_size: int = Field(32, ge=1, description="Examples per task per step.")
    lr: float = Field(5e-5, gt=0, alias="learning_rate", description="Peak learning rate.")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay (matrices only).")
    warmup: float = Field(0.1, ge=0, lt=1, description="Fraction of steps of linear warm-up.")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the update's norm; null: off.")
    max_length: int = Field(128, ge=8, description="Tokens per example (longer are truncated).")
    train_layers: int | None = Field(
        None, ge=0, description="Train only the top N transformer layers (plus pooler and heads); "
        "null: everything, embeddings included.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast; auto: bf16 on CUDA, fp32 elsewhere.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's).")
    eval_every: int | None = Field(None, ge=1, description="Score the validation split every N steps.")
    eval_samples: int = Field(200, ge=1, description="Validation examples per task for eval_every.")
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable state every N steps.")
    log_every: int = Field(10, ge=1, description="Report per-task losses every N steps.")
    cache_dir: str = Field("checkpoints/training", description="Trained models and resumable states.")
    evaluate_only: bool = Field(False, description="Use the cached trained model; never train.")

    # Settings that change where the files go or what is reported, not the trained weights.
    NOT_IN_CACHE_KEY: ClassVar[frozenset[str]] = frozenset({
        "eval_every", "eval_samples", "checkpoint_every", "log_every", "cache_dir", "evaluate_only",
        "threads"})


class TrainerMethod(Method):
    """A method that fine-tunes the base on all tasks at once, steered by the preference.

    The shared training loop (`prefkit.train`) calls `task_weights` once per step with the
    current per-task losses; the update is θ ← θ − lr·Σ α_i ∇L_i. Methods that need the task
    gradients (EPO) set `uses_gradients` and receive their Gram matrix G = J·Jᵀ.

    Class attributes:
        name, aliases, summary, reference_url: as for TensorMethod.
        Settings: the `train:` block's model (a TrainSettings subclass).
        uses_gradients: compute the per-task gradients every step (m backward passes).
    """

    kind: ClassVar[str] = "trainer"
    Settings: ClassVar[type[TrainSettings]] = TrainSettings
    uses_gradients: ClassVar[bool] = False

    def start(self, preference: Any, settings: TrainSettings) -> dict[str, Any]:
        """The method's state before the first step (JSON-able: it is saved for resuming)."""
        return {}

    @abc.abstractmethod
    def task_weights(self, losses: Any, *, preference: Any, settings: TrainSettings,
                     state: dict[str, Any], gram: Any = None) -> Any:
        """The weights α of the task losses for this step.

        Args:
            losses: the per-task losses of this step's batches (1-D float64 tensor, detached).
            preference: the normalised preference (1-D float64 tensor, sums to 1).
            settings: the validated `train:` block.
            state: the method's state; update it in place (e.g. a running ideal point).
            gram: G = J·Jᵀ of the per-task gradients (m × m, float64) when `uses_gradients`.

        Returns:
            α, a 1-D tensor of m non-negative weights.
        """


class Corpus(Params):
    """An unlabeled text corpus named in a solver's `train:` block (instead of the tasks' splits)."""

    dataset: str = Field(description="A `datasets` path: a hub id (e.g. wikitext) or a builder for "
                         "local files (text, csv, json) with data_files.")
    config_name: str | None = Field(None, description="The dataset configuration, e.g. "
                                    "wikitext-2-raw-v1.")
    data_files: str | list[str] | None = Field(None, description="Local files, relative to the "
                                               "recipe's folder.")
    split: str = "train"
    field: str = Field("text", description="The column holding the texts.")


class SolverSettings(Params):
    """The `train:` block every solver accepts: which unlabeled data, how much of it, and where
    the solver runs (methods subclass it to add their own settings)."""

    steps: int = Field(100, ge=1, description="Optimiser steps; each draws one batch of every task.")
    batch_size: int = Field(16, ge=1, description="Unlabeled examples per task per step.")
    split: Literal["train", "validation"] = Field(
        "train", description="Each task's split whose texts (labels dropped) the solver adapts on.")
    corpus: Corpus | None = Field(None, description="Instead of the tasks' splits: one unlabeled "
                                  "corpus for every task (single texts).")
    num_samples: int | None = Field(None, ge=1, description="A seeded subset of this many "
                                    "examples per task (null: all of them).")
    max_length: int = Field(128, ge=8, description="Tokens per example (longer are truncated).")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's).")
    log_every: int = Field(10, ge=1, description="Report the per-task objective every N steps.")
    allow_eval_split: bool = Field(
        False, description="Allow adapting on the split that `evaluate:` scores (test-time "
        "adaptation: the scores are then not held out).")


@dataclass(frozen=True)
class SolveContext:
    """What a solver's `solve` gets.

    Attributes:
        plan: the resolved `prefkit.recipe.plan.Plan` (inputs, tensors, heads, output config).
        tasks: each model's task, in recipe order.
        preference: the preference normalised to sum 1 (uniform when the recipe gives none).
        settings: the validated `train:` block (the method's `Settings`).
        reporter: where progress and notes go (`note(message)`).
    """

    plan: Any
    tasks: tuple[Task, ...]
    preference: tuple[float, ...]
    settings: SolverSettings
    reporter: Any


@dataclass(frozen=True)
class Solution:
    """What a solver learned.

    Attributes:
        state: JSON-able; saved as ``<output>/<method name>.json`` and passed to every `merge`
            call as `info.state`.
        summary: a short JSON-able digest for the run's result line and ``prefkit.json``.
    """

    state: dict[str, Any]
    summary: dict[str, Any]


class SolverMethod(TensorMethod):
    """A method that learns its merge coefficients on unlabeled data, then merges tensor by tensor.

    `prefkit run` calls `solve` once, then the streaming executor calls `merge` (see
    TensorMethod) for every tensor with the solution's state in `info.state`, so the output is
    written like any merge; `prepare` is not called.

    Class attributes: as for TensorMethod, plus
        Settings: the `train:` block's model (a SolverSettings subclass).
    """

    kind: ClassVar[str] = "solver"
    Settings: ClassVar[type[SolverSettings]] = SolverSettings

    @abc.abstractmethod
    def solve(self, context: SolveContext) -> Solution:
        """Learn the coefficients; raise a PrefkitError (one line) when the inputs do not fit."""


@dataclass(frozen=True)
class Task:
    """A labelled text-classification task, for evaluation, training and AdaMerging.

    Attributes:
        name: the name recipes and `--tasks` use (snake_case).
        dataset: a `datasets.load_dataset` path: a hub id (``SetFit/mnli``) or a builder for
            local files (``csv``, ``json``, ``parquet``) together with `data_files`.
        text_fields: one field (single text) or two (a sentence pair), in model input order.
        label_names: the task's labels in the dataset's label order (label i = label_names[i]).
        label_field: the column with integer labels.
        splits: split roles (``train``, ``validation``, ``test``) → the dataset's split names.
        data_files: for local builders: split name → file(s).
        config_name: the dataset configuration, if any.
        loader: instead of `datasets.load_dataset`, a function split name → `datasets.Dataset`
            (for data that packages ship in their own formats).
        metrics: metric names reported by evaluation.
        summary: one line for `prefkit tasks`.
        source: where the data come from and their licence.
        known_label_orders: documented output orders of known models (hub id → label names in
            the model's output order), for models whose config only says LABEL_0..k.
    """

    name: str
    dataset: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    label_field: str = "label"
    splits: dict[str, str] = field(default_factory=lambda: {
        "train": "train", "validation": "validation", "test": "test"})
    data_files: dict[str, Any] | None = None
    config_name: str | None = None
    loader: Callable[[str], Any] | None = None
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    summary: str = ""
    source: str = ""
    known_label_orders: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
