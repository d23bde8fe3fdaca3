"""The recipe envelope (pydantic, unknown keys forbidden). Method parameters are checked later,
against the method's own Params models, once the method is known (`prefkit.recipe.plan`)."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ErrorType

from prefkit.bounds import PreferenceEntry, preference_problem
from prefkit.io.paths import name_problem
from prefkit.recipe.sweep_keys import (
    LoggingSpec,
    MethodEntry,
    PreferenceGrid,
    WandbSpec,
    preferences_value,
    seeds_value,
)

DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64",
}

# mergekit keys that prefkit recognises but does not implement, with what to do instead.
UNSUPPORTED_MERGEKIT_KEYS = {
    "slices": "prefkit merges whole models; list them under models:",
    "modules": "prefkit merges whole models; list them under models:",
    "tokenizer": "use tokenizer_source: base or a model",
    "chat_template": "copy a chat template into the output's tokenizer_config.json yourself",
}


# Task names become file names (heads/<task>.safetensors, cache keys): no paths, no "..".
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _task_name(name: str) -> str:
    if not _TASK_NAME.match(name):
        raise ValueError(f"task name {name!r} may hold only letters, digits, '_', '.' and '-' "
                         "(it names files)")
    return name


def _path_text(value: str | None, *, output: bool = False) -> str | None:
    """A path (or hub id) the file system can take: no NUL byte, no name over NAME_MAX bytes, not
    over PATH_MAX (an output leaves room for its temporary sibling and the files inside it)."""
    problem = None if value is None else name_problem(value, output=output)
    if problem:
        raise ValueError(problem)
    return value


_BUILTIN_ERRORS = frozenset(typing.get_args(ErrorType))


def _reraisable(error: dict) -> dict:
    """An error of a raised ValidationError as one that can be raised again: pydantic takes its
    own error types by name, custom ones (`out_of_range` of prefkit.bounds) as objects."""
    if error["type"] in _BUILTIN_ERRORS:
        return error
    return {**error, "type": PydanticCustomError(error["type"], error["msg"])}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    model: str = Field(min_length=1,
                       description="Local checkpoint directory or hub id (`org/name[@revision]`).")
    lora: str | None = Field(
        None, min_length=1, description="prefkit: a LoRA/PEFT adapter (folder or hub id) applied "
        "to `model`; the same as mergekit's `model: base+adapter`.")
    parameters: dict[str, Any] | None = Field(None, description="Per-model method parameters.")
    task: str | None = Field(None, description="prefkit: the task this model was fine-tuned for.")
    labels: list[str] | None = Field(
        None, description="prefkit: the task's label names in this model's output order "
        "(when its config.json only says LABEL_0..k).")

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        return None if value is None else _task_name(value)

    _paths = field_validator("model", "lora")(_path_text)


class EvaluateSpec(_Strict):
    """prefkit: evaluate the merged model on its models' tasks after merging."""

    split: Literal["train", "validation", "test"] = "test"
    num_samples: int | None = Field(None, ge=1, description="A seeded subset of this size.")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    tasks: list[str] | None = Field(None, description="Default: the models' tasks.")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_task_name(v) for v in value]


class InlineTask(_Strict):
    """prefkit: a task defined in the recipe (a `datasets` loader spec)."""

    dataset: str = Field(description="Hub id, or csv / json / parquet with data_files.")
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_names: list[str] = Field(min_length=2)
    label_field: str = "label"
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "test": "test"})
    data_files: dict[str, Any] | None = None
    config_name: str | None = None


def _dtype(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use one of float32, float16, bfloat16, float64")
    return DTYPES[value]


class Recipe(_Strict):
    """One merge. Paths are resolved against the recipe's folder, then the working directory."""

    merge_method: str | None = Field(
        None, description="A registered method name (`prefkit methods`); a sweep may list "
        "methods: instead.")
    base_model: str | None = Field(None, description="The pretrained model the others were tuned from.")
    models: list[ModelEntry] = Field(min_length=1, description="The models to merge, in order.")
    parameters: dict[str, Any] | None = Field(None, description="Method parameters for all models.")
    dtype: str | None = Field(None, description="Compute dtype; default: the base model's.")
    out_dtype: str | None = Field(None, description="Output dtype; default: the compute dtype.")
    tokenizer_source: str | None = Field(
        None, description="`base` (default) or a model to copy the tokenizer from.")
    preference: list[PreferenceEntry] | None = Field(
        None, description="prefkit: one weight per model (finite, 0 to 1e6 each, summing to at "
        "least 1e-9).")
    heads: Literal["padded", "per_task"] = Field(
        "padded", description="prefkit: padded (zero-pad differing heads, merge) | per_task (also "
        "keep each task's own head beside the merged body, used for its task in evaluation).")
    output: str | None = Field(None, description="prefkit: output folder (default runs/<recipe name>).")
    evaluate: EvaluateSpec | None = Field(None, description="prefkit: evaluate after merging.")
    tasks: dict[str, InlineTask] | None = Field(None, description="prefkit: tasks defined inline.")
    train: dict[str, Any] | None = Field(
        None, description="prefkit: training settings of a trainer method (chebyshev, epo), "
        "checked against the method's own settings model.")
    # prefkit sweeps (prefkit.sweeps): a recipe with preferences: or methods: runs every point.
    preferences: Annotated[list[list[float]] | PreferenceGrid | None,
                           WrapValidator(preferences_value)] = Field(
        None, description="prefkit sweep: a list of preferences or {grid: simplex, steps: K}.")
    methods: list[MethodEntry] | None = Field(
        None, min_length=1, description="prefkit sweep: several methods, each with its parameters.")
    seeds: Annotated[list[int] | None, BeforeValidator(seeds_value)] = Field(
        None, description="prefkit sweep: run every point once per seed (training, solver, "
        "random-merge and evaluation-subset seeds); the report gives means with 95% CIs.")
    keep_models: bool = Field(True, description="prefkit sweep: keep merged models after scoring.")
    wandb: WandbSpec | None = Field(None, description="prefkit sweep: Weights & Biases logging.")
    logging: LoggingSpec | None = Field(None, description="prefkit sweep: log level, format, file.")

    _dtypes = field_validator("dtype", "out_dtype")(_dtype)
    _paths = field_validator("base_model", "tokenizer_source")(_path_text)

    @field_validator("output")
    @classmethod
    def _output(cls, value: str | None) -> str | None:
        return _path_text(value, output=True)

    @field_validator("tasks")
    @classmethod
    def _inline_task_names(cls, value: dict | None) -> dict | None:
        for name in value or {}:
            _task_name(name)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _method_named(cls, data: Any, handler: Any) -> Recipe:
        """merge_method is required, except in a sweep that lists its methods under methods:
        (reported with the other errors, as pydantic reports a missing field)."""
        needs = isinstance(data, dict) and data.get("merge_method") is None and not data.get("methods")
        missing = {"type": "missing", "loc": ("merge_method",), "input": data}
        try:
            recipe = handler(data)
        except ValidationError as exc:
            if not needs:
                raise
            raise ValidationError.from_exception_data(
                exc.title, [missing, *map(_reraisable, exc.errors())]) from None
        if needs:
            raise ValidationError.from_exception_data(cls.__name__, [missing])
        return recipe

    @field_validator("preference")
    @classmethod
    def _preference(cls, value: list[float] | None) -> list[float] | None:
        """Each entry is checked on its own (`PreferenceEntry`: finite, 0 to 1e6); here the whole."""
        problem = None if value is None else preference_problem(value)
        if problem:
            raise ValueError(problem)
        return value
