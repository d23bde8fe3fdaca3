"""Resolution: a loaded recipe + the registry → a frozen Plan, or every problem at once.

Everything a user can get wrong is found here, before the first tensor byte is read: the method,
its parameters, the preference, model paths, missing tensors, shapes and dtypes. Only checkpoint
headers and config files are read. The per-tensor part is `prefkit.recipe.tensors`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prefkit.api import TensorInfo
from prefkit.errors import (
    CheckpointError,
    LocatedCheckpointError,
    NotCachedError,
    NotCachedRecipeError,
    OutputError,
    PrefkitError,
    RecipeError,
    RecipeErrors,
    did_you_mean,
)
from prefkit.io.hub import resolve_model
from prefkit.io.lora import open_input
from prefkit.io.paths import identity, location_problem, output_name_problem
from prefkit.recipe.loader import LoadedRecipe
from prefkit.recipe.messages import describe
from prefkit.recipe.params import aliases, field_name, leaf_checker, owner_of
from prefkit.recipe.plan import ModelInput, Plan, Preference, RecipeSource
from prefkit.recipe.settings import setting_problems
from prefkit.recipe.tensors import TensorPlanner, out_config
from prefkit.registry import RegisteredMethod, Registry


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
        self.train_settings = None
        self.preference = Preference.of(self.recipe.preference)  # validated by the schema

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
                         "models", "give one per model, in the order of models:")
            if "weight" in self.global_settings:
                self.err(("parameters", "weight"), "weight and preference both given",
                         "drop one of them: preference sets each model's weight as m·p_i/Σp")
            for i, settings in enumerate(self.model_settings):
                if "weight" in settings:
                    self.err(("models", i, "parameters", "weight"),
                             "weight and preference both given",
                             "drop one of them: preference sets each model's weight as m·p_i/Σp")
        self._check_required(method)
        self._check_tasks()
        self.train_settings = self._train_settings(method)
        if method.base == "required" and not self.recipe.base_model:
            self.err(("merge_method",), f"method {method.name!r} needs base_model",
                     "add base_model: the pretrained model the others were tuned from")
        self._check_duplicates()
        if self.recipe.tokenizer_source == "union":
            self.err(("tokenizer_source",), "'union' is not supported",
                     "use base, the default, or one of the models")

    def _check_duplicates(self) -> None:
        """Each model once: a repeated entry would silently count one task twice. Here by the
        text (`./a` and `a/` are one path); once the models are found, by their files
        (`_check_same_files`)."""
        seen: dict[tuple, int] = {}
        for i, entry in enumerate(self.recipe.models):
            key = (os.path.normpath(entry.model), entry.lora and os.path.normpath(entry.lora))
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
                self.err(("train", *problem["loc"]), *describe(problem, method.Settings))
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

    def _base_listed(self, base: ModelInput, inputs: list[ModelInput | None]) -> bool:
        """base_model is one of the models (by its text, or by its folder or files)."""
        return any(m.model == self.recipe.base_model and m.lora is None for m in self.recipe.models
                   ) or any(m is not None and _same_model(base, m) for m in inputs)

    def _check_same_files(self, inputs: list[ModelInput | None]) -> None:
        """Two entries that reach one folder (a symlink alias) or the same files (a hard-linked
        copy) are one model listed twice."""
        for i, model in enumerate(inputs):
            for j, other in enumerate(inputs[:i]):
                if model is not None and other is not None and _same_model(model, other):
                    self.err(("models", i, "model"), f"{model.label} is the same model as "
                             f"models[{j}] ({other.label}): the same folder or files",
                             "list each model once; weigh it with preference or weight")
                    break

    def _check_output(self, output: Path, from_flag: bool, models: list[ModelInput]) -> None:
        """A name the file system can hold, outside every input folder and not holding the
        recipe or the working directory. A bad `-o` (or `output=`) is a usage error; a bad
        `output:` (or the default runs/<recipe name>) a recipe error."""
        problem = output_name_problem(output)
        problem = f"output {problem}" if problem else location_problem(
            output, _input_folders(models), self.loaded.path)
        if problem is None:
            return
        if from_flag:
            self.errors.append(OutputError(problem, hint="choose another output folder with -o"))
        else:
            self.err(("output",), problem, "choose another output folder with output: or -o")

    def _settings(self, raw: dict | None, loc: tuple, top_level: bool) -> dict[str, Any]:
        """Canonical parameter names → settings, with problems recorded at their location."""
        method = self.method.method
        out: dict[str, Any] = {}
        given: dict[str, str] = {}  # canonical name -> the key that set it
        for key, setting in (raw or {}).items():
            name = method.param_aliases.get(key, key)
            owner = owner_of(method, name)
            if owner is None:
                known = sorted({*aliases(method.Params), *aliases(method.ModelParams)})
                self.err((*loc, key), f"unknown parameter for method {method.name!r}",
                         did_you_mean(key, known) + f"known: {', '.join(known) or 'none'}")
                continue
            if not top_level and owner is method.Params:
                self.err((*loc, key), f"{key!r} is shared by all models, not set per model",
                         "set it under the top-level parameters:")
                continue
            if name in out:
                self.err((*loc, key), f"given twice: {given[name]!r} and {key!r} name the same "
                         "parameter", "keep one of them")
                continue
            given[name] = key
            field = field_name(owner, name)
            for sub, problem in setting_problems(setting, leaf_checker(owner, field)):
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
        self._check_same_files(inputs)
        if method.base == "input" and base is not None and not self._base_listed(base, inputs):
            if self.recipe.preference is None:  # mergekit: the base is one more input
                inputs.append(base)
                self.model_settings.append({})
                notes.append(f"{method.name}: base_model is merged as one more input (mergekit)")
            else:  # prefkit: a preference weighs the listed models only
                notes.append(f"{method.name}: base_model gives config and tokenizer only; the "
                             "preference weighs the listed models")
        self.raise_errors()
        planner = TensorPlanner(method, dtype=self.recipe.dtype, out_dtype=self.recipe.out_dtype,
                                global_settings=self.global_settings,
                                model_settings=self.model_settings, preference=self.preference,
                                errors=self.errors, err=self.err)
        tensors, tensor_notes = planner.plan(base, inputs)
        notes += tensor_notes
        self.raise_errors()
        shared = planner.shared(TensorInfo("", None, 0.0, ()))
        from_flag = output is not None
        output = Path(output or self.recipe.output or Path("runs") / self.loaded.path.stem)
        self._check_output(output, from_flag, [m for m in (base, *inputs) if m])
        self.raise_errors()
        return Plan(
            source=RecipeSource(self.loaded.path, self.loaded.digest, self.loaded.data),
            method=self.method, base=base, inputs=tuple(inputs),
            tensors=tuple(tensors), shared_params=shared, output=output,
            out_config=out_config(base, inputs, tensors),
            tokenizer_source=self._tokenizer_source(base, inputs, recipe_dir),
            notes=tuple(notes), preference=self.preference, heads=self.recipe.heads,
            evaluate=self.recipe.evaluate, inline_tasks=self.recipe.tasks,
            train=self.train_settings,
        )

    def _open(self, ref: str, loc: tuple, task: str | None, recipe_dir: Path,
              labels: list[str] | None = None, lora: str | None = None) -> ModelInput | None:
        try:
            # a LoRA adapter (`base+adapter` or `lora:`) is applied in prefkit.io.lora
            path, checkpoint = open_input(ref, recipe_dir, lora, allow_pickle=self.allow_pickle)
            return ModelInput(ref if lora is None else f"{ref}+{lora}", path, task, checkpoint,
                              tuple(labels) if labels else None)
        except CheckpointError as exc:
            self.errors.append(self._located(loc, exc))
            return None

    def _located(self, loc: tuple, exc: CheckpointError) -> RecipeError:
        """A model's problem at the recipe line that names it: a damaged checkpoint exits 1
        (merge failed), a missing one 3; models missing from the hub's cache are grouped."""
        from prefkit.io.damage import CheckpointFileError

        if isinstance(exc, NotCachedError):
            error = self.loaded.error(loc, exc.message, exc.hint, NotCachedRecipeError)
            error.ref, error.cache = exc.ref, exc.cache
            return error
        cls = LocatedCheckpointError if isinstance(exc, CheckpointFileError) else RecipeError
        return self.loaded.error(loc, exc.message, exc.hint, cls)

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



def _same_model(a: ModelInput, b: ModelInput) -> bool:
    """One folder (symlinks and `./a` vs `a/` resolved: st_dev, st_ino), or the same files."""
    key = identity(a.path)
    if key is not None and key == identity(b.path):
        return True
    files = _file_keys(a)
    return bool(files) and files == _file_keys(b)


def _file_keys(model: ModelInput) -> frozenset:
    keys = {identity(m.file) for m in model.checkpoint.tensors.values()}
    return frozenset(keys - {None})


def _input_folders(models: list[ModelInput]) -> list[tuple[Path, str]]:
    """Every folder a merge reads from: each model's, and those of its files (a LoRA input's
    folder is its cache entry; its other tensors are in the base's folder)."""
    out: dict[Path, str] = {}
    for model in models:
        for folder in (model.path, *sorted({m.file.parent for m in model.checkpoint.tensors.values()})):
            out.setdefault(folder, f"the input model {model.label}")
    return list(out.items())
