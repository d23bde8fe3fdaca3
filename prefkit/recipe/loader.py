"""YAML loading that remembers where every key is, so errors read `file:line:col: field: message`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prefkit.errors import RecipeError, RecipeErrors
from prefkit.recipe.schema import UNSUPPORTED_MERGEKIT_KEYS, Recipe

Marks = dict[tuple, tuple[int, int]]  # key path -> (line, col), both 1-based


@dataclass(frozen=True)
class LoadedRecipe:
    """A schema-valid recipe with the data it came from and the positions of its keys."""

    path: Path
    recipe: Recipe
    data: dict[str, Any]
    marks: Marks
    overrides: dict[tuple, str] | None = None  # key path -> the `--set` that gave it

    def where(self, loc: tuple) -> str:
        """`file:line:col` of the deepest key of `loc` in the file, or the `--set` that set it."""
        for end in range(len(loc), -1, -1):
            if self.overrides and tuple(loc[:end]) in self.overrides:
                return f"{self.path}: --set {self.overrides[tuple(loc[:end])]}"
            if tuple(loc[:end]) in self.marks:
                line, col = self.marks[tuple(loc[:end])]
                return f"{self.path}:{line}:{col}"
        return str(self.path)

    def error(self, loc: tuple, message: str, hint: str | None = None,
              cls: type[RecipeError] = RecipeError) -> RecipeError:
        return cls(message, where=self.where(loc), field=dotted(loc), hint=hint)

    @property
    def digest(self) -> str:
        """Content hash of the recipe data (after --set overrides)."""
        blob = json.dumps(self.data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk(node: yaml.Node, loader: yaml.SafeLoader, path: tuple, marks: Marks, where: str) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise RecipeError(
                    f"duplicate key {key!r}", where=f"{where}:{line}:{col}",
                    field=dotted((*path, key)), hint="each key may appear once",
                )
            out[key] = _walk(value_node, loader, (*path, key), marks, where)
            marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, loader, (*path, i), marks, where) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, where: str) -> tuple[Any, Marks]:
    """Parse one YAML document into plain data and a map of key paths to positions."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marks: Marks = {}
        data = {} if node is None else _walk(node, loader, (), marks, where)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise RecipeError(f"invalid YAML: {exc.problem or exc}", where=pos) from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid YAML: {exc}", where=where) from exc
    finally:
        loader.dispose()
    return data, marks


def apply_override(data: dict, marks: Marks, assignment: str) -> tuple:
    """Apply one `--set key.path=value` (value parsed as YAML; list indices are numbers)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. parameters.density=0.3")
    key, raw = assignment.split("=", 1)
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {key}: value {raw!r} is not valid YAML") from exc
    target: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(target, dict):
            target = target.setdefault(part, {})
        elif isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        else:
            raise RecipeError(f"--set {key}: {dotted(tuple(parts[: i + 1]))} is not a mapping")
    last = parts[-1]
    if isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"--set {key}: cannot set {dotted(tuple(parts))}")
    for path in [p for p in marks if p[: len(parts)] == tuple(parts)]:
        del marks[path]
    return tuple(parts)


def load_recipe(path: str | Path, overrides: tuple[str, ...] = ()) -> LoadedRecipe:
    """Read a recipe file, apply `--set` overrides and validate the envelope (all errors at once).

    Raises:
        RecipeError / RecipeErrors: with `file:line:col: field: message` for each problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise RecipeError(f"recipe file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    data, marks = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a YAML mapping (merge_method:, models:, ...)",
                          where=f"{path}:1:1")
    overridden = {apply_override(data, marks, a): a for a in overrides}
    probe = LoadedRecipe(path, Recipe.model_construct(), data, marks, overridden)
    errors = [
        probe.error((key,), f"mergekit's {key!r} is not supported by prefkit", hint=why)
        for key, why in UNSUPPORTED_MERGEKIT_KEYS.items() if key in data
    ]
    try:
        recipe = Recipe.model_validate(
            {k: v for k, v in data.items() if k not in UNSUPPORTED_MERGEKIT_KEYS}
        )
    except ValidationError as exc:
        errors += [_from_pydantic(probe, err) for err in exc.errors()]
        recipe = None
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    return LoadedRecipe(path, recipe, data, marks, overridden)


def _from_pydantic(probe: LoadedRecipe, err: dict) -> RecipeError:
    # pydantic puts union branch names (e.g. 'float', 'list[...]') into loc; keep real keys only.
    loc = tuple(p for p in err["loc"] if isinstance(p, int) or not _is_type_tag(p))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
        hint = "check the spelling; `prefkit validate --help` lists the recipe keys"
    elif err["type"] == "missing":
        message = "required key is missing"
        hint = None
    else:
        message = message.removeprefix("Value error, ")
        hint = None
    return probe.error(loc, message, hint)


def _is_type_tag(part: str) -> bool:
    return any(ch in part for ch in "[]()") or part in {"float", "int", "bool", "str"}
