"""The recipe envelope (pydantic, unknown keys forbidden). Method parameters are checked later,
against the method's own Params models, once the method is known (`prefkit.plan`)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    model: str = Field(description="Local checkpoint directory or hub id (`org/name[@revision]`).")
    parameters: dict[str, Any] | None = Field(None, description="Per-model method parameters.")
    task: str | None = Field(None, description="prefkit: the task this model was fine-tuned for.")


def _dtype(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use one of float32, float16, bfloat16, float64")
    return DTYPES[value]


class Recipe(_Strict):
    """One merge. Paths are resolved against the recipe's folder, then the working directory."""

    merge_method: str = Field(description="A registered method name (`prefkit methods`).")
    base_model: str | None = Field(None, description="The pretrained model the others were tuned from.")
    models: list[ModelEntry] = Field(min_length=1, description="The models to merge, in order.")
    parameters: dict[str, Any] | None = Field(None, description="Method parameters for all models.")
    dtype: str | None = Field(None, description="Compute dtype; default: the base model's.")
    out_dtype: str | None = Field(None, description="Output dtype; default: the compute dtype.")
    tokenizer_source: str | None = Field(
        None, description="`base` (default) or a model to copy the tokenizer from.")
    preference: list[float] | None = Field(None, description="prefkit: one weight per model.")
    heads: Literal["padded"] = Field("padded", description="prefkit: how differing heads merge.")
    output: str | None = Field(None, description="prefkit: output folder (default runs/<recipe name>).")

    _dtypes = field_validator("dtype", "out_dtype")(_dtype)

    @field_validator("preference")
    @classmethod
    def _preference(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("preference is empty; give one non-negative number per model")
        if any(math.isnan(p) or math.isinf(p) for p in value):
            raise ValueError("preference entries must be finite numbers (found NaN or inf)")
        if any(p < 0 for p in value):
            raise ValueError("preference entries must be >= 0")
        if sum(value) <= 0:
            raise ValueError("preference is all zeros; at least one entry must be > 0")
        return value
