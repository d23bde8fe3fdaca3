"""Planning the output tensors: for each tensor name, its inputs, shape (heads zero-padded),
dtypes, layer position and the method's parameters resolved for it (mergekit's gradients and
filters). Part of resolution (`prefkit.recipe.resolve`): problems are collected, not raised.

config.json is data: the keys used here are checked first (`prefkit.io.modelconfig`). Gradients
run over the layers the tensor names have (highest index + 1), not over config.json's
`num_hidden_layers`: when the two disagree the names win and the plan notes it."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from prefkit.api import Params, TensorInfo
from prefkit.errors import CheckpointError, PrefkitError
from prefkit.io.checkpoint import TensorMeta
from prefkit.io.modelconfig import config_layers, config_problems, is_count, num_labels
from prefkit.recipe.messages import translate
from prefkit.recipe.params import field_name, resolve_values
from prefkit.recipe.plan import FLOAT_DTYPES, ModelInput, Preference, TensorPlan

_LAYER = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.")
MAX_LAYERS = 100_000  # a layer index in a tensor name above this is damage, not a model


class TensorPlanner:
    """Plans tensors for one method; `err(loc, message, hint)` records a recipe problem, and
    checkpoint problems go straight into `errors` (the resolver's list)."""

    def __init__(self, method, *, dtype: str | None, out_dtype: str | None,
                 global_settings: dict[str, Any], model_settings: list[dict[str, Any]],
                 preference: Preference | None, errors: list[PrefkitError], err):
        self.method = method  # the TensorMethod (or solver/trainer) object
        self.dtype, self.out_dtype = dtype, out_dtype
        self.global_settings, self.model_settings = global_settings, model_settings
        self.preference = preference
        self.errors, self.err = errors, err
        self._reported: set[tuple] = set()

    def plan(self, base: ModelInput | None, inputs: list[ModelInput]):
        """Every output tensor's plan (sorted by name) and the notes for the user."""
        names = sorted({n for m in inputs for n in m.checkpoint.tensors})
        notes = []
        if base is not None and base not in inputs:
            dropped = sorted(set(base.checkpoint.tensors) - set(names))
            if dropped:
                notes.append(f"{len(dropped)} tensor(s) only in base_model are not written "
                             f"(e.g. {dropped[0]})")
        checked = len(self.errors)
        seen: set[int] = set()
        for model in (base, *inputs):
            if model is not None and id(model.checkpoint) not in seen:
                seen.add(id(model.checkpoint))
                self.errors += config_problems(model.checkpoint.path, model.checkpoint.config)
        num_layers, note = self._num_layers(base or inputs[0], names, inputs)
        if len(self.errors) > checked:
            return [], notes
        notes += [note] if note else []
        plans = []
        for name in names:
            plan = self._tensor(name, base, inputs, num_layers)
            if plan is not None:
                plans.append(plan)
            if len(self.errors) >= 10:
                break
        notes += padding_notes([p for p in plans if p.padded])
        if not self.errors and hasattr(self.method, "check"):
            try:
                self.method.check([(p.info, p.params, p.model_params) for p in plans
                                          if not p.copy])
            except ValueError as exc:
                self.err(("parameters",), str(exc))
        return plans, notes

    def _num_layers(self, model: ModelInput, names: list[str], inputs) -> tuple[int, str | None]:
        count, note, odd = _num_layers(model, names)
        if odd is not None:
            where = next(m.checkpoint.tensors[odd].file for m in inputs if odd in m.checkpoint.tensors)
            self.errors.append(CheckpointError(
                f"{where}: tensor {odd!r} has layer index {_layer_of(odd)}, more than a model "
                f"has (at most {MAX_LAYERS - 1})", hint="the checkpoint is damaged or lying: "
                "restore it from the model's source"))
        return count, note

    def _tensor(self, name, base, inputs, num_layers) -> TensorPlan | None:
        metas = [m.checkpoint.tensors.get(name) for m in inputs]
        missing = [m.label for m, meta in zip(inputs, metas) if meta is None]
        present = [meta for meta in metas if meta is not None]
        if missing and all(meta.dtype not in FLOAT_DTYPES for meta in present):
            # integer buffers (e.g. position_ids) that older checkpoints saved and newer do not
            info = TensorInfo(name, None, 0.0, tuple(m.label for m in inputs))
            return TensorPlan(name, present[0].shape, present[0].dtype, present[0].dtype,
                              tuple(metas), present[0], info, None, (), copy=True)
        if missing:
            have = [m.label for m, meta in zip(inputs, metas) if meta is not None]
            where = next(m.path for m, meta in zip(inputs, metas) if meta is None)
            self.errors.append(CheckpointError(
                f"{where}: tensor {name!r} is in {', '.join(have)} but missing from "
                f"{', '.join(missing)}", hint="all models must share one architecture"))
            return None
        base_meta = _base_tensor(base, name, inputs[0]) if base is not None else None
        odd = [meta for meta in (*metas, base_meta) if meta is not None
               and (meta.dtype in FLOAT_DTYPES) != (metas[0].dtype in FLOAT_DTYPES)]
        if odd:  # a float tensor cannot be merged with an integer one
            self.errors.append(CheckpointError(
                f"{odd[0].file}: tensor {name!r} is {odd[0].dtype} here but {metas[0].dtype} in "
                f"{inputs[0].label}", hint="the checkpoints do not share one architecture"))
            return None
        shape = self._shape(name, base, base_meta, inputs, metas)
        if shape is None:
            return None
        layer = _layer_of(name)
        t = 0.0 if layer is None else (layer / (num_layers - 1) if num_layers > 1 else 1.0)
        info = TensorInfo(name, layer, t, tuple(m.label for m in inputs))
        ref = base_meta or metas[0]
        if ref.dtype not in FLOAT_DTYPES:
            return TensorPlan(name, ref.shape, ref.dtype, ref.dtype, tuple(metas), base_meta, info,
                              None, (), copy=True)
        compute = self.dtype or ref.dtype
        out = self.out_dtype or compute
        shared = self.shared(info)
        per_model = self._per_model(info, inputs)
        if shared is None or per_model is None:
            return None
        return TensorPlan(name, shape, out, compute, tuple(metas), base_meta, info, shared,
                          per_model)

    def _shape(self, name, base, base_meta, inputs, metas) -> tuple[int, ...] | None:
        shapes = {meta.shape for meta in metas}
        if base_meta is not None:
            shapes.add(base_meta.shape)
        if len(shapes) == 1:
            return next(iter(shapes))
        from prefkit.recipe.plan import HEAD_PREFIXES

        tails = {s[1:] for s in shapes}
        labels = [_num_labels(m.checkpoint.config) for m in inputs]
        fits = [lab is None or meta.shape[0] == lab for lab, meta in zip(labels, metas)]
        # a head by its name, or by the configs: each model's first dimension is its label count
        by_config = all(fits) and all(lab is not None for lab in labels)
        is_head = len(tails) == 1 and all(s for s in shapes) and all(fits) and (
            by_config or name.startswith(HEAD_PREFIXES))
        if is_head:  # padded for both head modes; per_task also keeps each task's own head
            return (max(s[0] for s in shapes), *next(iter(tails)))
        described = [f"{list(meta.shape)} in {m.label}" for m, meta in zip(inputs, metas)]
        if base_meta is not None:
            described.append(f"{list(base_meta.shape)} in base {base.label}")
        first = next(meta for meta in (*metas, base_meta)
                     if meta is not None and meta.shape != metas[0].shape)
        self.errors.append(CheckpointError(
            f"{first.file}: tensor {name!r} has different shapes: {'; '.join(described)}",
            hint="only classification heads (differing label counts) can be padded: tensors "
            f"named {', '.join(p + '…' for p in HEAD_PREFIXES)} or whose first dimension is each "
            "model's label count in its config.json"))
        return None

    def shared(self, info: TensorInfo) -> Params | None:
        cls = self.method.Params
        values = resolve_values(cls, [self.global_settings], info)
        return self._build(cls, values, info.name, None)

    def _per_model(self, info: TensorInfo, inputs) -> tuple[Params, ...] | None:
        cls = self.method.ModelParams
        weights = self.preference.weights if self.preference is not None else None
        out = []
        for i, model in enumerate(inputs):
            # a model's own settings beat the top-level ones, which beat the default
            values = resolve_values(cls, [self.model_settings[i], self.global_settings], info)
            if weights is not None and "weight" in cls.model_fields and i < len(weights):
                values["weight"] = weights[i]
            built = self._build(cls, values, info.name, model.label)
            if built is None:
                return None
            out.append(built)
        return tuple(out)

    def _build(self, cls, values: dict, tensor: str, model: str | None) -> Params | None:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            e = exc.errors()[0]
            field = ".".join(str(p) for p in e["loc"])
            who = f" of model {model}" if model else ""
            if (field, model, e["type"]) in self._reported:
                return None  # one line per problem, not one per tensor
            self._reported.add((field, model, e["type"]))
            if e["type"] == "missing":
                hint = ("set it under parameters: (all models) or models[].parameters, "
                        "or give a preference")
                self.err(("parameters",), f"parameter {field!r}{who} is not set (first needed "
                         f"for tensor {tensor!r})", hint)
            else:
                info = cls.model_fields.get(field_name(cls, field))
                message, hint = translate(e, info, field)
                self.err(("parameters", field), f"for tensor {tensor!r}{who}: {message}", hint)
            return None


def padding_notes(padded: list[TensorPlan]) -> list[str]:
    """One note for the merge, not one per tensor: `classifier.out_proj.weight: head zero-padded to
    [4, 64]` for one head tensor, `3 head tensors zero-padded to 4 classes (classifier.a, ...)`
    for several (`prefkit plan` lists each tensor's shape)."""
    if len(padded) <= 1:
        return [f"{p.name}: head zero-padded to {list(p.shape)}" for p in padded]
    classes = sorted({p.shape[0] for p in padded})
    names = ", ".join(p.name for p in padded[:3]) + (", ..." if len(padded) > 3 else "")
    return [f"{len(padded)} head tensors zero-padded to "
            f"{' / '.join(map(str, classes))} classes ({names})"]


def _base_tensor(base: ModelInput, name: str, model: ModelInput) -> TensorMeta | None:
    """The base's tensor for `name`; a base saved as the bare encoder (`embeddings.…`) serves a
    task model's prefixed names (`bert.embeddings.…`), the prefix being the model type."""
    tensors = base.checkpoint.tensors
    if name in tensors:
        return tensors[name]
    prefix = f"{(model.checkpoint.config or {}).get('model_type', '')}."
    if prefix != "." and name.startswith(prefix):
        return tensors.get(name[len(prefix):])
    return None


def _layer_of(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _num_layers(model: ModelInput, names: list[str]) -> tuple[int, str | None, str | None]:
    """The layer count gradients interpolate over, a note when config.json disagrees, and the
    name of a tensor whose layer index is implausible.

    The count is the tensor names' (highest layer index + 1), so that t = layer / (count - 1)
    stays within [0, 1] whatever config.json says; its `num_hidden_layers` (or `n_layer`,
    `num_layers`) only gives a note when it differs. No layer index in the names: 1 (every
    tensor then has t = 0 and the count is not used).
    """
    top = max(((layer, n) for n in names if (layer := _layer_of(n)) is not None), default=None)
    if top is not None and top[0] >= MAX_LAYERS:
        return 1, None, top[1]
    count = top[0] + 1 if top is not None else 1
    given = config_layers(model.checkpoint.config)
    if top is None or given is None or given[1] == count:
        return count, None, None
    key, value = given
    said = f"says {key}: {value}" if is_count(value) else f"has {key} {value!r}, not a count"
    return count, (f"{model.label}: config.json {said}, but the tensor names have {count} "
                   f"layers (0 to {count - 1}): gradients run over {count}"), None


def _num_labels(config: dict | None) -> int | None:
    return num_labels(config)


def out_config(base, inputs, tensors) -> dict[str, Any] | None:
    """The base's config, with the task-head fields of the models (padded when they differ)."""
    source = base or inputs[0]
    if source.checkpoint.config is None:
        return None
    config = dict(source.checkpoint.config)
    first = inputs[0].checkpoint.config or {}
    if base is not None and first.get("architectures"):
        config["architectures"] = first["architectures"]
    labels = [_num_labels(m.checkpoint.config) for m in inputs]
    if any(lab is not None for lab in labels):
        maps = [m.checkpoint.config.get("id2label") for m in inputs if m.checkpoint.config]
        width = max(lab for lab in labels if lab is not None)
        if all(mp == maps[0] for mp in maps) and maps[0]:
            config["id2label"] = maps[0]
        else:
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(width)}
        config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
        config.pop("num_labels", None)
    dtypes = {p.out_dtype for p in tensors if not p.copy}
    if len(dtypes) == 1:
        key = "dtype" if "dtype" in config else "torch_dtype"
        config[key] = next(iter(dtypes))
    return config
