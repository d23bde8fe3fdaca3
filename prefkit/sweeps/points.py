"""A sweep recipe → its points: one ordinary recipe per (method, grid setting, preference, seed),
checked like any recipe (errors point into the sweep file), with the content keys that cache them.

A point recipe is the sweep recipe without the sweep keys, with one method's `merge_method`,
`parameters` and `train` (one combination of its `grid:` values written into them), one
`preference`, and with `seeds:` one seed, written where the method draws random numbers:
`evaluate.seed` (the test subset) always, `train.seed` for trainer and solver methods,
`parameters.random_seed` for tensor methods that declare one (DARE-like). Its model key hashes
that recipe (paths as written, without `output` and `evaluate`) and the fingerprints of its
input checkpoints; its evaluation key adds `evaluate`. Same key ⇒ the stored model (or score) is reused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError, PrefkitError, RecipeErrors
from prefkit.recipe.loader import LoadedRecipe, Marks
from prefkit.recipe.sweep_keys import PreferenceGrid
from prefkit.sweeps.grid import simplex_grid

SWEEP_KEYS = ("preferences", "methods", "seeds", "keep_models", "wandb", "logging")
METHOD_KEYS = ("merge_method", "parameters", "train")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Point:
    """One run of a sweep. `recipe` is the point recipe as the sweep file writes it."""

    label: str  # the method's row in the report
    recipe: dict[str, Any]
    marks: Marks  # where each key of `recipe` is in the sweep file
    overrides: dict[tuple, str]
    method_loc: tuple  # ("methods", i) or () for the top-level method
    seed: int | None = None  # the sweep's seed of this point (seeds:), None without seeds:
    grid: dict[str, Any] | None = None  # this point's values of the method's grid: settings
    family: str = ""  # the method's label without grid values (a budget curve's rows share it)

    @property
    def preference(self) -> list[float] | None:
        return self.recipe.get("preference")

    def loaded(self, sweep: LoadedRecipe) -> LoadedRecipe:
        """The point as a LoadedRecipe whose errors point into the sweep file."""
        from pydantic import ValidationError

        from prefkit.recipe.schema import Recipe

        try:
            recipe = Recipe.model_validate(self.recipe)
        except ValidationError as exc:  # the sweep keys were checked: only a bug lands here
            raise sweep.error(self.method_loc, f"point recipe is invalid: {exc}") from exc
        return LoadedRecipe(sweep.path, recipe, self.recipe, self.marks, self.overrides)


def _moved(table: dict[tuple, Any], moves: list[tuple[tuple, tuple]]) -> dict[tuple, Any]:
    """Re-key `table` (key path → anything) so that each `src` prefix becomes its `dst`."""
    out = {}
    for path, value in table.items():
        for src, dst in moves:
            if path[: len(src)] == src:
                out[(*dst, *path[len(src):])] = value
                break
    return out


def _method_entries(sweep: LoadedRecipe) -> list[tuple[dict[str, Any], tuple]]:
    """(method keys, their location) for each method of the sweep."""
    data = sweep.data
    if sweep.recipe.methods is None:
        return [({k: data[k] for k in METHOD_KEYS if k in data}, ())]
    return [({k: entry[k] for k in METHOD_KEYS if k in entry}, ("methods", i))
            for i, entry in enumerate(data["methods"])]


def _preferences(sweep: LoadedRecipe) -> list[tuple[list[float] | None, tuple]]:
    """(preference, its location) for each preference of the sweep."""
    spec = sweep.recipe.preferences
    if spec is None:
        return [(sweep.data.get("preference"), ("preference",))]
    if isinstance(spec, PreferenceGrid):
        return [(p, ("preferences",)) for p in simplex_grid(len(sweep.recipe.models), spec.steps)]
    return [(list(p), ("preferences", j)) for j, p in enumerate(sweep.data["preferences"])]


def labels(sweep: LoadedRecipe) -> list[str]:
    """Report labels: `name:`, else the method name, with its parameters when listed twice."""
    entries = sweep.recipe.methods
    if entries is None:
        return [sweep.recipe.merge_method or ""]
    names = [e.merge_method for e in entries]
    out = []
    for e in entries:
        if e.name:
            out.append(e.name)
        elif names.count(e.merge_method) > 1:
            settings = {**(e.parameters or {}), **(e.train or {})}
            out.append(f"{e.merge_method}({', '.join(f'{k}={v}' for k, v in settings.items())})")
        else:
            out.append(e.merge_method)
    return out


def expand(sweep: LoadedRecipe, registry=None) -> list[Point]:
    """Every point of a sweep: methods outermost (in file order), then grid settings, then
    preferences, then seeds. `registry` says where a seed goes (see the module docstring);
    without it, only into `evaluate` and a `train:` the method entry gives."""
    import itertools

    data = sweep.data
    shared = {k: v for k, v in data.items()
              if k not in (*SWEEP_KEYS, *METHOD_KEYS, "preference", "output")}
    seeds = [(seed, ("seeds", k)) for k, seed in enumerate(sweep.recipe.seeds or [])] or [(None, ())]
    points = []
    for label, (method, method_loc) in zip(labels(sweep), _method_entries(sweep)):
        targets = _seed_targets(method, registry)
        for (setting, grid_moves), (preference, pref_loc), (seed, seed_loc) in itertools.product(
                _grid_settings(sweep, method_loc), _preferences(sweep), seeds):
            recipe = {"merge_method": method["merge_method"], **shared}
            recipe.update({k: dict(method[k]) for k in ("parameters", "train") if k in method})
            for key, value in setting.items():
                section, field = key.split(".", 1)
                recipe.setdefault(section, {})[field] = value
            if preference is not None:  # floats: [1, 0] and [1.0, 0.0] are one point (one key)
                recipe["preference"] = [float(x) for x in preference]
            seeded = [] if seed is None else _seeded(recipe, seed, *targets)
            moves = [((*method_loc, k), (k,)) for k in METHOD_KEYS] + grid_moves
            moves += [(pref_loc, ("preference",))] + [((k,), (k,)) for k in shared]
            marks = _moved(sweep.marks, moves)
            marks[()] = sweep.marks.get((), (1, 1))
            marks.update({t: sweep.marks[seed_loc] for t in seeded if seed_loc in sweep.marks})
            name = " ".join([label, *(f"{k.split('.', 1)[1]}={v}" for k, v in setting.items())])
            points.append(Point(name, recipe, marks, _moved(sweep.overrides or {}, moves),
                                method_loc or ("merge_method",), seed, setting or None, label))
    return points


def _grid_settings(sweep: LoadedRecipe, method_loc: tuple) -> list[tuple[dict[str, Any], list]]:
    """Each combination of a method entry's `grid:` values ({} without one), with the moves that
    put each value's location in the sweep file where the point recipe has it."""
    import itertools

    if not method_loc:
        return [({}, [])]
    grid = sweep.data["methods"][method_loc[1]].get("grid") or {}
    keys = list(grid)
    out = []
    for choice in itertools.product(*(range(len(grid[k])) for k in keys)):
        setting = {k: grid[k][j] for k, j in zip(keys, choice)}
        moves = [((*method_loc, "grid", k, j), tuple(k.split(".", 1))) for k, j in zip(keys, choice)]
        out.append((setting, moves))
    return out


def _seed_targets(method: dict[str, Any], registry) -> tuple[str | None, bool]:
    """(the method's kind, whether it declares a `random_seed` parameter), from the registry."""
    if registry is None:
        return None, False
    try:
        found = registry.get(method["merge_method"]).method
    except PrefkitError:  # unknown: check() says so, located
        return None, False
    return found.kind, "random_seed" in getattr(found.Params, "model_fields", {})


def _seeded(recipe: dict[str, Any], seed: int, kind: str | None, random_params: bool) -> list[tuple]:
    """Write the point's seed into its recipe; returns where it went (key paths)."""
    targets = [("evaluate", "seed")]
    if kind in ("trainer", "solver") or (kind is None and "train" in recipe):
        targets.append(("train", "seed"))
    elif random_params:
        targets.append(("parameters", "random_seed"))
    for section, field in targets:
        recipe[section] = {**(recipe.get(section) or {}), field: seed}
    return targets


def check_sweep(sweep: LoadedRecipe, registry) -> list[Point]:
    """The sweep's own rules, then every point's checks (each problem once). Returns the points.

    Raises:
        RecipeError / RecipeErrors: located in the sweep file.
    """
    from prefkit.recipe.resolve import check

    recipe = sweep.recipe
    errors: list[PrefkitError] = []
    if recipe.methods is not None:
        errors += [sweep.error((k,), f"{k} and methods: both given",
                               "with methods:, give merge_method and parameters in each entry")
                   for k in METHOD_KEYS if k in sweep.data]
    if recipe.preferences is not None and recipe.preference is not None:
        errors.append(sweep.error(("preference",), "preference and preferences both given",
                                  "a sweep runs each of its preferences: drop preference"))
    if recipe.evaluate is None:
        errors.append(sweep.error((), "a sweep scores every point: add evaluate: (e.g. "
                                  "evaluate: {split: test})"))
    errors += [sweep.error(("models", i), "a sweep needs task: for every model",
                           "preference entry i weighs the task of model i")
               for i, m in enumerate(recipe.models) if not m.task]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels(sweep)):
        if label in seen:
            errors.append(sweep.error(("methods", i), f"methods[{i}] has the same label {label!r} "
                                      f"as methods[{seen[label]}]", "give each a distinct name:"))
        seen.setdefault(label, i)
    errors += _axis_conflicts(sweep)
    points = expand(sweep, registry)
    messages = {str(e) for e in errors}
    for point in points:
        try:
            check(point.loaded(sweep), registry)
        except RecipeErrors as exc:
            errors += [e for e in exc.errors if str(e) not in messages]
            messages |= {str(e) for e in exc.errors}
        except PrefkitError as exc:
            if str(exc) not in messages:
                errors.append(exc)
                messages.add(str(exc))
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    return points


def _axis_conflicts(sweep: LoadedRecipe) -> list[PrefkitError]:
    """A setting given both as a value and by an axis (`grid:`, `seeds:`): which one counts
    would be a guess, so it is an error at the value."""
    data, errors = sweep.data, []
    entries = [(("methods", i), e) for i, e in enumerate(data.get("methods") or [])] or [((), data)]
    for loc, entry in entries:
        for key in entry.get("grid") or {}:
            section, field = key.split(".", 1)
            if field in (entry.get(section) or {}):
                errors.append(sweep.error((*loc, section, field), f"{key} is given here and in "
                                          "grid:", "keep one of them"))
        if sweep.recipe.seeds is not None:
            for section, field in (("train", "seed"), ("parameters", "random_seed")):
                if field in (entry.get(section) or {}):
                    errors.append(sweep.error((*loc, section, field), f"{section}.{field} and "
                                              "seeds: both given", "seeds: sets it for each point"))
    if sweep.recipe.seeds is not None and "seed" in (data.get("evaluate") or {}):
        errors.append(sweep.error(("evaluate", "seed"), "evaluate.seed and seeds: both given",
                                  "seeds: sets it for each point (the test subset it draws)"))
    return errors


def check_plain(loaded: LoadedRecipe) -> None:
    """A recipe that is not a sweep may not use the sweep-only keys."""
    for key in ("keep_models", "wandb", "logging"):
        if key in loaded.data:
            raise loaded.error((key,), f"{key} applies to sweeps only",
                               "add preferences: (or methods:) to make this recipe a sweep")


# -- cache keys ---------------------------------------------------------------------------------

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def input_fingerprints(sweep: LoadedRecipe) -> dict[str, str]:
    """Model reference → fingerprint (tensor names, dtypes, shapes, file sizes and mtimes).

    Raises:
        RecipeError: a model cannot be found (located at its `model:` key).
    """
    from prefkit.io.checkpoint import Checkpoint
    from prefkit.io.hub import resolve_model
    from prefkit.recipe.plan import fingerprint

    refs = [(("models", i, "model"), m.model) for i, m in enumerate(sweep.recipe.models)]
    if sweep.recipe.base_model:
        refs.insert(0, (("base_model",), sweep.recipe.base_model))
    out: dict[str, str] = {}
    for loc, ref in refs:
        if ref in out:
            continue
        try:
            ckpt = Checkpoint.open(resolve_model(ref, sweep.path.parent))
        except CheckpointError as exc:
            raise sweep.error(loc, exc.message, exc.hint) from exc
        files = sorted({meta.file for meta in ckpt.tensors.values()})
        stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        out[ref] = _digest([fingerprint(ckpt), stamps])
    return out


def model_key(point: Point, fingerprints: dict[str, str]) -> str:
    """What the stored model depends on: the point recipe (less output and evaluate) and inputs."""
    recipe = {k: v for k, v in point.recipe.items() if k not in ("output", "evaluate")}
    return _digest({"recipe": recipe, "inputs": fingerprints})


def eval_key(key: str, point: Point) -> str:
    """What the stored score depends on: the model and the evaluate: settings."""
    return _digest({"model": key, "evaluate": point.recipe.get("evaluate")})


def folder_name(point: Point, key: str) -> str:
    """`<method>_<model key>`, and `_s<seed>` with seeds: (a deterministic merge has one model
    key for every seed, but each seed's score has its own test subset and record)."""
    seed = "" if point.seed is None else f"_s{point.seed}"
    return f"{_SLUG.sub('_', point.recipe['merge_method'])}_{key[:12]}{seed}"


def standalone(point: Point, sweep: LoadedRecipe, output: Path) -> dict[str, Any]:
    """The point recipe as a file of its own: local model paths made absolute, and its output."""
    from prefkit.io.hub import resolve_local

    here = sweep.path.parent

    def absolute(ref: str) -> str:
        local = resolve_local(ref, here)
        return str(local) if local is not None else ref

    recipe = json.loads(json.dumps(point.recipe))  # a deep copy of plain data
    if recipe.get("base_model"):
        recipe["base_model"] = absolute(recipe["base_model"])
    for model in recipe["models"]:
        model["model"] = absolute(model["model"])
    if recipe.get("tokenizer_source") not in (None, "base"):
        # a model named by its reference stays that model: both are made absolute alike
        recipe["tokenizer_source"] = absolute(recipe["tokenizer_source"])
    recipe["output"] = str(output.resolve())
    return recipe
