"""What resolution produces: a frozen Plan, and its parts.

A Plan holds everything the layers below need (the method, the inputs, every output tensor, the
normalised preference, the head mode, the evaluation and training settings), so that nothing below
the resolver (`prefkit.recipe.resolve`) reads the raw recipe: `source` is kept for provenance only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.api import Params, TensorInfo
from prefkit.io.checkpoint import Checkpoint, TensorMeta
from prefkit.registry import RegisteredMethod

HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.")
FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}  # merged (others are copied)


@dataclass(frozen=True)
class ModelInput:
    label: str  # as written in the recipe
    path: Path
    task: str | None
    checkpoint: Checkpoint
    labels: tuple[str, ...] | None = None  # the recipe's `labels:` (task labels in output order)


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: where its inputs are, how to merge it, what it becomes."""

    name: str
    shape: tuple[int, ...]
    out_dtype: str
    compute_dtype: str
    sources: tuple[TensorMeta | None, ...]  # one per input model; None: zeros (head absent)
    base: TensorMeta | None
    info: TensorInfo
    params: Params | None
    model_params: tuple[Params, ...]
    copy: bool = False  # non-float tensors are copied from the base (or first model)

    @property
    def padded(self) -> bool:
        metas = [m for m in (*self.sources, self.base) if m is not None]
        return any(m.shape != self.shape for m in metas) or None in self.sources


@dataclass(frozen=True)
class Preference:
    """The recipe's preference over its models' tasks (validated: finite, ≥ 0, not all zero, one
    entry per model). The one owner of its arithmetic: every layer reads these properties."""

    given: tuple[float, ...]  # as written in the recipe

    @property
    def normalised(self) -> tuple[float, ...]:
        """p_i / Σp, summed left to right (torch's float64 sum gives the same bits for up to 4
        entries; for more, this order holds on every machine, where torch's depends on its SIMD)."""
        total = sum(self.given)
        return tuple(p / total for p in self.given)

    @property
    def weights(self) -> tuple[float, ...]:
        """Each model's merge weight m·p_i/Σp (mergekit's weights; a uniform preference gives 1)."""
        m, total = len(self.given), sum(self.given)
        return tuple(m * p / total for p in self.given)

    @classmethod
    def of(cls, values) -> Preference | None:
        return None if values is None else cls(tuple(float(v) for v in values))


@dataclass(frozen=True)
class RecipeSource:
    """The recipe a plan came from: provenance (prefkit.json, recipe.yaml, cache keys) only."""

    path: Path
    digest: str  # content hash of the recipe data, after --set overrides
    data: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    source: RecipeSource
    method: RegisteredMethod
    base: ModelInput | None
    inputs: tuple[ModelInput, ...]
    tensors: tuple[TensorPlan, ...]
    shared_params: Params  # the top-level shared parameters (for pre-passes)
    output: Path
    out_config: dict[str, Any] | None
    tokenizer_source: Path | None
    notes: tuple[str, ...]  # things the user should know (dropped tensors, padded heads)
    preference: Preference | None = None  # None: the recipe gives none
    heads: str = "padded"  # padded | per_task
    evaluate: Any = None  # the recipe's `evaluate:` (an EvaluateSpec), or None
    inline_tasks: dict[str, Any] | None = None  # the recipe's `tasks:` (InlineTask by name)
    train: Any = None  # trainer and solver methods: the validated `train:` block

    @property
    def task_preference(self) -> tuple[float, ...]:
        """What trainers and solvers optimise for: the normalised preference, uniform if none."""
        if self.preference is None:
            return tuple(1.0 / len(self.inputs) for _ in self.inputs)
        return self.preference.normalised

    @property
    def head_tensors(self) -> list[str]:
        """Classifier tensors: padded ones, ones the base lacks, and those under a head module."""
        return [t.name for t in self.tensors if not t.copy and (
            t.padded or (self.base is not None and t.base is None)
            or t.name.startswith(HEAD_PREFIXES))]

    @property
    def digest(self) -> str:
        """Hash of the resolved recipe and the input fingerprints (names, shapes, dtypes, sizes)."""
        h = hashlib.sha256(self.source.digest.encode())
        for model in (self.base, *self.inputs):
            if model is not None:
                h.update(fingerprint(model.checkpoint).encode())
        return h.hexdigest()


def fingerprint(ckpt: Checkpoint) -> str:
    """Cheap content fingerprint: header facts of every tensor plus each file's size."""
    h = hashlib.sha256()
    for name in sorted(ckpt.tensors):
        meta = ckpt.tensors[name]
        h.update(f"{name}:{meta.dtype}:{meta.shape}:{meta.file.stat().st_size}".encode())
    return h.hexdigest()[:16]
