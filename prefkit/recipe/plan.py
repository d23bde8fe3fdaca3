"""Resolution: a loaded recipe + the registry → a frozen Plan, or every problem at once.

Everything a user can get wrong is found here, before the first tensor byte is read: the method,
its parameters, the preference, model paths, missing tensors, shapes and dtypes. Only checkpoint
headers and config files are read.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from prefkit.api import Params, TensorInfo
from prefkit.errors import CheckpointError, PrefkitError, RecipeError, RecipeErrors
from prefkit.io.checkpoint import Checkpoint, TensorMeta
from prefkit.io.hub import resolve_model
from prefkit.io.lora import open_input
from prefkit.io.outdir import location_problem
from prefkit.recipe.loader import LoadedRecipe
from prefkit.recipe.settings import evaluate, setting_problems
from prefkit.registry import RegisteredMethod, Registry

HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.")
FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}
_LAYER = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.")


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
class Plan:
    loaded: LoadedRecipe
    method: RegisteredMethod
    base: ModelInput | None
    inputs: tuple[ModelInput, ...]
    tensors: tuple[TensorPlan, ...]
    shared_params: Params  # the top-level shared parameters (for pre-passes)
    output: Path
    out_config: dict[str, Any] | None
    tokenizer_source: Path | None
    notes: tuple[str, ...]  # things the user should know (dropped tensors, padded heads)
    train: Any = None  # trainer methods: the validated `train:` block (a TrainSettings)

    @property
    def head_tensors(self) -> list[str]:
        """Classifier tensors: padded ones, ones the base lacks, and those under a head module."""
        return [t.name for t in self.tensors if not t.copy and (
            t.padded or (self.base is not None and t.base is None)
            or t.name.startswith(HEAD_PREFIXES))]

    @property
    def digest(self) -> str:
        """Hash of the resolved recipe and the input fingerprints (names, shapes, dtypes, sizes)."""
        h = hashlib.sha256(self.loaded.digest.encode())
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


def resolve(loaded: LoadedRecipe, registry: Registry, output: str | Path | None = None, *,
            allow_pickle: bool = False) -> Plan:
    """Check a recipe against the registry and its checkpoints and return the Plan.

    `allow_pickle`: read (and fetch) pickle `.bin` checkpoints, with `weights_only=True`.
    """
    return _Resolver(loaded, registry, allow_pickle).run(output)


def check(loaded: LoadedRecipe, registry: Registry) -> None:
    """Checks that need no checkpoint: method, parameters, preference (`prefkit validate`)."""
    resolver = _Resolver(loaded, registry)
    resolver.check_static()
    resolver.raise_errors()


@cache
def _leaf_adapter(params_cls: type, field: str) -> TypeAdapter:
    from typing import Annotated

    info = params_cls.model_fields[field]
    if not info.metadata:
        return TypeAdapter(info.annotation)
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])


class _Resolver:
    def __init__(self, loaded: LoadedRecipe, registry: Registry, allow_pickle: bool = False):
        self.loaded = loaded
        self.allow_pickle = allow_pickle
        self.recipe = loaded.recipe
        self.registry = registry
        self.errors: list[PrefkitError] = []
        self.method: RegisteredMethod | None = None
        self.global_settings: dict[str, Any] = {}
        self.model_settings: list[dict[str, Any]] = []
        self._reported: set[tuple] = set()
        self.train_settings = None

    def err(self, loc: tuple, message: str, hint: str | None = None, cls=RecipeError) -> None:
        self.errors.append(self.loaded.error(loc, message, hint, cls))

    def raise_errors(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise RecipeErrors(self.errors)

    # -- checks that need no files ---------------------------------------------------------
    def check_static(self) -> None:
        try:
            self.method = self.registry.get(self.recipe.merge_method)
        except RecipeError as exc:
            self.err(("merge_method",), exc.message, exc.hint, type(exc))
            return
        method = self.method.method
        self.global_settings = self._settings(self.recipe.parameters, ("parameters",), True)
        self.model_settings = [
            self._settings(m.parameters, ("models", i, "parameters"), False)
            for i, m in enumerate(self.recipe.models)
        ]
        if self.recipe.preference is not None:
            n = len(self.recipe.models)
            if len(self.recipe.preference) != n:
                self.err(("preference",), f"has {len(self.recipe.preference)} entries for {n} "
                         "models; give one per model, in the order of models:")
            if "weight" in self.global_settings:
                self.err(("parameters", "weight"), "weight and preference both given",
                         "preference sets each model's weight (m·p_i/Σp); drop one of them")
            for i, settings in enumerate(self.model_settings):
                if "weight" in settings:
                    self.err(("models", i, "parameters", "weight"),
                             "weight and preference both given",
                             "preference sets each model's weight (m·p_i/Σp); drop one of them")
        self._check_required(method)
        self._check_tasks()
        self.train_settings = self._train_settings(method)
        if method.base == "required" and not self.recipe.base_model:
            self.err(("merge_method",), f"method {method.name!r} needs base_model",
                     "add base_model: the pretrained model the others were tuned from")
        self._check_duplicates()
        if self.recipe.tokenizer_source == "union":
            self.err(("tokenizer_source",), "union is not supported",
                     "use base (default) or a model path")

    def _check_duplicates(self) -> None:
        """Each model once: a repeated entry would silently count one task twice."""
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.recipe.models):
            key = os.path.normpath(entry.model)
            if key in seen:
                self.err(("models", i, "model"), f"{entry.model} is listed twice (also "
                         f"models[{seen[key]}])", "list each model once; weigh it with "
                         "preference or weight")
            seen.setdefault(key, i)

    def _check_required(self, method) -> None:
        """A per-model parameter without default must be set for every model (or by preference)."""
        for field, info in method.ModelParams.model_fields.items():
            name = info.alias or field
            if not info.is_required() or (name == "weight" and self.recipe.preference):
                continue
            for i, settings in enumerate(self.model_settings):
                if name not in settings and name not in self.global_settings:
                    self.err(("models", i), f"parameter {name!r} is not set for model "
                             f"{self.recipe.models[i].model}",
                             "set it under parameters: (all models) or models[].parameters"
                             + (", or give a preference" if name == "weight" else ""))

    def _check_tasks(self) -> None:
        """With `evaluate:`, every task must be registered or defined inline; labels: must fit."""
        if self.recipe.evaluate is None:
            return
        inline = self.recipe.tasks or {}
        named = [(("models", i, "task"), m.task) for i, m in enumerate(self.recipe.models) if m.task]
        named += [(("evaluate", "tasks", i), t) for i, t in enumerate(self.recipe.evaluate.tasks or [])]
        if not named:
            self.err(("evaluate",), "nothing to evaluate: no model has a task:",
                     "add task: to the models, or evaluate: {tasks: [...]}")
        for loc, name in named:
            if name in inline:
                continue
            try:
                self.registry.task(name)
            except RecipeError as exc:
                self.err(loc, exc.message, exc.hint, type(exc))

    def _train_settings(self, method):
        """Trainer and solver methods: the `train:` block against the method's Settings; every
        model needs a registered (or inline) task. Other methods: no `train:` block."""
        raw = self.recipe.train
        kind = getattr(method, "kind", "tensor")
        if kind not in ("trainer", "solver"):
            if raw is not None:
                self.err(("train",), f"method {method.name!r} does not train",
                         "train: is for trainer and solver methods (chebyshev, epo, adamerging); "
                         "remove it")
            return None
        inline = self.recipe.tasks or {}
        for i, model in enumerate(self.recipe.models):
            if not model.task:
                self.err(("models", i), f"{method.name} trains on every model's task; "
                         f"{model.model} has no task:", "add task: <name> (see `prefkit tasks`)")
            elif model.task not in inline and self.recipe.evaluate is None:
                try:
                    self.registry.task(model.task)
                except RecipeError as exc:
                    self.err(("models", i, "task"), exc.message, exc.hint, type(exc))
        tasks = [m.task for m in self.recipe.models if m.task]
        for task in {t for t in tasks if tasks.count(t) > 1}:
            self.err(("models",), f"task {task!r} is given for more than one model",
                     "a trainer learns one head per task; list each task once")
        try:
            settings = method.Settings.model_validate(raw or {})
        except ValidationError as exc:
            for problem in exc.errors():
                self.err(("train", *problem["loc"]), problem["msg"])
            return None
        if getattr(settings, "epochs", None) is not None and settings.steps is not None:
            self.err(("train", "epochs"), "steps and epochs both given", "keep one of them")
        if kind == "solver":
            self._check_adaptation_data(settings)
        return settings

    def _check_adaptation_data(self, settings) -> None:
        """Solvers adapt on unlabeled data: each task's `train.split` (which must exist), never
        the split that `evaluate:` scores unless `allow_eval_split`; a corpus gives single texts."""
        inline, spec = self.recipe.tasks or {}, self.recipe.evaluate
        missing, scored, pairs = [], [], []
        for model in self.recipe.models:
            registered = self.registry.tasks.get(model.task) if model.task else None
            task = inline.get(model.task) or (registered.task if registered else None)
            if task is None:
                continue  # no task: reported above
            splits = task.splits
            if settings.corpus is not None:
                pairs += [model.task] if len(task.text_fields) > 1 else []
            elif settings.split not in splits:
                missing.append(model.task)
            elif spec is not None and splits[settings.split] == splits.get(spec.split):
                scored.append(f"{model.task} ({splits[settings.split]})")
        if pairs:
            self.err(("train", "corpus"), f"task(s) {', '.join(pairs)} take text pairs; a corpus "
                     "gives single texts", "adapt on the tasks' own texts (train.split)")
        if missing:
            self.err(("train", "split"), f"task(s) {', '.join(missing)} have no "
                     f"{settings.split!r} split", "set train.split or train.corpus")
        if scored and not settings.allow_eval_split:
            self.err(("train", "split"), f"{self.method.method.name} would adapt on the split that "
                     f"evaluate: scores, for task(s) {', '.join(scored)}", "adapt on another split "
                     "(train.split) or a corpus, or set train.allow_eval_split: true to adapt on "
                     "the evaluation data knowingly")

    def _base_listed(self) -> bool:
        return any(m.model == self.recipe.base_model and m.lora is None for m in self.recipe.models)

    def _settings(self, raw: dict | None, loc: tuple, top_level: bool) -> dict[str, Any]:
        """Canonical parameter names → settings, with problems recorded at their location."""
        method = self.method.method
        out: dict[str, Any] = {}
        for key, setting in (raw or {}).items():
            name = method.param_aliases.get(key, key)
            owner = _owner(method, name)
            if owner is None:
                known = sorted({*_aliases(method.Params), *_aliases(method.ModelParams)})
                self.err((*loc, key), f"unknown parameter for method {method.name!r}",
                         f"known: {', '.join(known) or 'none'}")
                continue
            if not top_level and owner is method.Params:
                self.err((*loc, key), "is shared by all models; set it under the top-level "
                         "parameters:")
                continue
            if name in out:
                self.err((*loc, key), f"given twice (as {key!r} and its other name)")
                continue
            field = _field_name(owner, name)
            for sub, problem in setting_problems(setting, _leaf_checker(owner, field)):
                self.err((*loc, key, *sub), problem)
            out[name] = setting
        return out

    # -- checks against checkpoints ----------------------------------------------------------
    def run(self, output: str | Path | None) -> Plan:
        self.check_static()
        self.raise_errors()
        recipe_dir = self.loaded.path.parent
        base = None
        if self.recipe.base_model:
            base = self._open(self.recipe.base_model, ("base_model",), None, recipe_dir)
        inputs = [self._open(m.model, ("models", i, "model"), m.task, recipe_dir, m.labels, m.lora)
                  for i, m in enumerate(self.recipe.models)]
        method = self.method.method
        notes = []
        if method.base == "input" and base is not None and not self._base_listed():
            if self.recipe.preference is None:  # mergekit: the base is one more input
                inputs.append(base)
                self.model_settings.append({})
                notes.append(f"{method.name}: base_model is merged as one more input (mergekit)")
            else:  # prefkit: a preference weighs the listed models only
                notes.append(f"{method.name}: base_model gives config and tokenizer only; the "
                             "preference weighs the listed models")
        self.raise_errors()
        tensors, tensor_notes = self._tensors(base, inputs)
        notes += tensor_notes
        self.raise_errors()
        shared = self._shared(TensorInfo("", None, 0.0, ()))
        output = Path(output or self.recipe.output or Path("runs") / self.loaded.path.stem)
        problem = location_problem(output, {m.label: m.path for m in (base, *inputs) if m},
                                   self.loaded.path)
        if problem:
            self.err(("output",), problem, "choose another output folder with output: or -o")
        self.raise_errors()
        return Plan(
            loaded=self.loaded, method=self.method, base=base, inputs=tuple(inputs),
            tensors=tuple(tensors), shared_params=shared, output=output,
            out_config=_out_config(base, inputs, tensors),
            tokenizer_source=self._tokenizer_source(base, inputs, recipe_dir),
            notes=tuple(notes), train=self.train_settings,
        )

    def _open(self, ref: str, loc: tuple, task: str | None, recipe_dir: Path,
              labels: list[str] | None = None, lora: str | None = None) -> ModelInput | None:
        try:
            # a LoRA adapter (`base+adapter` or `lora:`) is applied in prefkit.io.lora
            path, checkpoint = open_input(ref, recipe_dir, lora, allow_pickle=self.allow_pickle)
            return ModelInput(ref if lora is None else f"{ref}+{lora}", path, task, checkpoint,
                              tuple(labels) if labels else None)
        except CheckpointError as exc:
            self.err(loc, exc.message, exc.hint)
            return None

    def _tokenizer_source(self, base, inputs, recipe_dir) -> Path | None:
        source = self.recipe.tokenizer_source
        if source in (None, "base"):
            return (base or inputs[0]).path
        for model in inputs:
            if model.label == source:
                return model.path
        try:
            return resolve_model(source, recipe_dir, self.allow_pickle)
        except CheckpointError as exc:
            raise self.loaded.error(("tokenizer_source",), exc.message, exc.hint) from exc

    def _tensors(self, base: ModelInput | None, inputs: list[ModelInput]):
        names = sorted({n for m in inputs for n in m.checkpoint.tensors})
        notes = []
        if base is not None and base not in inputs:
            dropped = sorted(set(base.checkpoint.tensors) - set(names))
            if dropped:
                notes.append(f"{len(dropped)} tensor(s) only in base_model are not written "
                             f"(e.g. {dropped[0]})")
        num_layers = _num_layers(base or inputs[0], names)
        plans = []
        for name in names:
            plan = self._tensor(name, base, inputs, num_layers)
            if plan is not None:
                plans.append(plan)
                if plan.padded:
                    notes.append(f"{name}: head zero-padded to {list(plan.shape)}")
            if len(self.errors) >= 10:
                break
        if not self.errors and hasattr(self.method.method, "check"):
            try:
                self.method.method.check([(p.info, p.params, p.model_params) for p in plans
                                          if not p.copy])
            except ValueError as exc:
                self.err(("parameters",), str(exc))
        return plans, notes

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
        compute = self.recipe.dtype or ref.dtype
        out = self.recipe.out_dtype or compute
        shared = self._shared(info)
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
        tails = {s[1:] for s in shapes}
        labels = [_num_labels(m.checkpoint.config) for m in inputs]
        is_head = len(tails) == 1 and all(s for s in shapes) and all(
            lab is None or meta.shape[0] == lab for lab, meta in zip(labels, metas))
        if is_head:  # padded for both head modes; per_task also keeps each task's own head
            return (max(s[0] for s in shapes), *next(iter(tails)))
        described = [f"{list(meta.shape)} in {m.label}" for m, meta in zip(inputs, metas)]
        if base_meta is not None:
            described.append(f"{list(base_meta.shape)} in base {base.label}")
        first = next(meta for meta in (*metas, base_meta)
                     if meta is not None and meta.shape != metas[0].shape)
        self.errors.append(CheckpointError(
            f"{first.file}: tensor {name!r} has different shapes: {'; '.join(described)}",
            hint="only classification heads (differing label counts) can be padded"))
        return None

    def _shared(self, info: TensorInfo) -> Params | None:
        cls = self.method.method.Params
        values = _resolve_values(cls, [self.global_settings], info)
        return self._build(cls, values, info.name, None)

    def _per_model(self, info: TensorInfo, inputs) -> tuple[Params, ...] | None:
        cls = self.method.method.ModelParams
        preference = self.recipe.preference
        out = []
        for i, model in enumerate(inputs):
            # a model's own settings beat the top-level ones, which beat the default
            values = _resolve_values(cls, [self.model_settings[i], self.global_settings], info)
            if preference is not None and "weight" in cls.model_fields and i < len(preference):
                values["weight"] = len(preference) * preference[i] / sum(preference)
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
                self.err(("parameters", field), f"{e['msg']} for tensor {tensor!r}{who}")
            return None


def _resolve_values(cls: type[Params], sources: list[dict[str, Any]], info: TensorInfo) -> dict:
    """Each parameter's value for one tensor from the first source whose setting applies."""
    values = {}
    for name in _aliases(cls):
        validate = _leaf_adapter(cls, _field_name(cls, name)).validate_python
        for settings in sources:
            setting = settings.get(name)
            value = None if setting is None else evaluate(setting, info.name, info.t, validate)
            if value is not None:
                values[name] = value
                break
    return values


def _aliases(cls: type[Params]) -> list[str]:
    return [info.alias or name for name, info in cls.model_fields.items()]


def _field_name(cls: type[Params], name: str) -> str:
    for field, info in cls.model_fields.items():
        if (info.alias or field) == name:
            return field
    return name


def _owner(method, name: str) -> type[Params] | None:
    for cls in (method.Params, method.ModelParams):
        if name in _aliases(cls):
            return cls
    return None


def _leaf_checker(cls: type[Params], field: str):
    adapter = _leaf_adapter(cls, field)

    def check(value: Any) -> str | None:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            return exc.errors()[0]["msg"]
        return None

    return check


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


def _num_layers(model: ModelInput, names: list[str]) -> int:
    config = model.checkpoint.config or {}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    layers = [layer for n in names if (layer := _layer_of(n)) is not None]
    return max(layers) + 1 if layers else 1


def _num_labels(config: dict | None) -> int | None:
    if not config:
        return None
    if isinstance(config.get("id2label"), dict):
        return len(config["id2label"])
    return config.get("num_labels")


def _out_config(base, inputs, tensors) -> dict[str, Any] | None:
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
