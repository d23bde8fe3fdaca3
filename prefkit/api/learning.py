"""Methods that learn: trainers (fine-tuning for a preference through the shared loop) and solvers
(coefficients learned on unlabeled data, then merged tensor by tensor), with their settings."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from prefkit.api.methods import Method, TensorMethod
from prefkit.api.params import Params
from prefkit.api.tasks import Task


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
