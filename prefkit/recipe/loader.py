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
from prefkit.recipe.messages import describe
from prefkit.recipe.recipe_file import read_recipe_bytes
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


# Limits that keep a hostile recipe from exhausting memory or the stack: YAML aliases can expand
# a few lines into billions of values ("billion laughs") or refer to themselves.
MAX_NODES = 100_000
MAX_DEPTH = 64
_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that stops composing at MAX_NODES nodes: a long plain list would
    otherwise be built whole (seconds and hundreds of MB) before `_Walk` counts it."""

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.composed = 0

    def compose_node(self, parent, index):
        self.composed += 1
        if self.composed > MAX_NODES:
            mark = self.peek_event().start_mark
            raise RecipeError(f"the recipe holds more than {MAX_NODES} values",
                              where=f"{self.where}:{mark.line + 1}:{mark.column + 1}",
                              hint="a recipe lists models and parameters")
        return super().compose_node(parent, index)


class _Walk:
    """Turns a composed YAML node tree into plain data, recording where each key path starts."""

    def __init__(self, loader: yaml.SafeLoader, where: str):
        self.loader = loader
        self.where = where
        self.marks: Marks = {}
        self.nodes = 0
        self.active: set[int] = set()  # the collections being walked, to catch alias cycles

    def fail(self, node: yaml.Node, path: tuple, message: str, hint: str | None = None):
        mark = node.start_mark
        return RecipeError(message, where=f"{self.where}:{mark.line + 1}:{mark.column + 1}",
                           field=dotted(path), hint=hint)

    def value(self, node: yaml.Node, path: tuple) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, path, f"the recipe expands to more than {MAX_NODES} values",
                            "YAML aliases may not multiply its size")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path[:1], f"nested more than {MAX_DEPTH} levels deep",
                            "a recipe needs a few levels: models, their parameters, filters")
        self.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            return self.construct(node, path)
        if node.tag not in _COLLECTION_TAGS:
            raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}",
                            "recipes hold plain mappings, lists and values only")
        if id(node) in self.active:
            raise self.fail(node, path, "a YAML alias refers to itself",
                            "write the values out where the alias *name stands")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.value(v, (*path, i)) for i, v in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, path, "a key must be a plain value, not a list or mapping")
            key = self.construct(key_node, path)
            if not isinstance(key, str):  # e.g. `1:` or `on:` (YAML 1.1 reads it as true)
                raise self.fail(key_node, path, f"key {key_node.value!r} must be text",
                                f'quote it: "{key_node.value}":')
            if key in out:
                raise self.fail(key_node, (*path, key), f"duplicate key {key!r}",
                                "each key may appear once")
            self.marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.value(value_node, (*path, key))
        return out

    def construct(self, node: yaml.ScalarNode, path: tuple) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except Exception as exc:  # PyYAML's safe constructors fail in several ways on bad
            # scalars (2024-13-45 raises ValueError, an empty !!timestamp AttributeError)
            detail = f": {exc}" if isinstance(exc, ValueError) else ""
            kind = node.tag.rsplit(":", 1)[-1]
            raise self.fail(node, path, f"invalid {kind} {node.value!r}{detail}",
                            f'quote it to keep it as text: "{node.value}"') from exc


def parse_yaml(text: str, where: str) -> tuple[Any, Marks]:
    """Parse one YAML document into plain data and a map of key paths to positions.

    Only the safe subset is accepted: no Python (or other) tags on collections, no alias that
    refers to itself, a bounded size and depth.
    """
    loader = None
    try:
        loader = _Loader(text, where)  # checks the characters first
        walk = _Walk(loader, where)
        node = loader.get_single_node()
        data = {} if node is None else walk.value(node, ())
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, where) from exc
    except yaml.reader.ReaderError as exc:  # a control character, reported by offset
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise RecipeError(f"invalid YAML: character {chr(exc.character)!r} is not allowed",
                          where=f"{where}:{line}:{col}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid YAML: {str(exc).splitlines()[0]}", where=where) from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise RecipeError("invalid YAML: nested too deeply", where=where) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return data, walk.marks


# What to do about PyYAML's problems, by a part of its problem or context text.
_YAML_HINTS = (
    ("'\\t'", "indent with spaces: YAML does not allow tabs"),
    ("quoted scalar", "close the quote"),
    ("flow sequence", "close the list with ]"),
    ("flow mapping", "close the mapping with }"),
    ("single document", "a recipe is one YAML document: remove the --- line"),
    ("mapping values are not allowed", "quote a value that holds ': '"),
    ("block", "line up the keys of one mapping, and the - items of one list, in one column"),
)


def _yaml_error(exc: yaml.MarkedYAMLError, where: str) -> RecipeError:
    """`file:line:col: invalid YAML: problem, context at line:col (hint)` from PyYAML's marks."""
    mark = exc.problem_mark or exc.context_mark
    pos = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
    message = (exc.problem or str(exc)).removeprefix("but ")
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        message += f", {exc.context} at {exc.context_mark.line + 1}:{exc.context_mark.column + 1}"
    hint = next((h for part, h in _YAML_HINTS if part in message), None)
    return RecipeError(f"invalid YAML: {message}", where=pos, hint=hint)


def apply_override(data: dict, marks: Marks, assignment: str) -> tuple:
    """Apply one `--set key.path=value` (value parsed as YAML; list indices are numbers)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. parameters.density=0.3")
    key, raw = assignment.split("=", 1)
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    value, _ = parse_yaml(raw, f"--set {key}")  # the same safe subset as recipe files
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
    data, marks = parse_yaml(_read_text(path), str(path))
    return _validated(path, data, marks, overrides)


def load_recipe_mapping(data: dict[str, Any], overrides: tuple[str, ...] = ()) -> LoadedRecipe:
    """A recipe given as a mapping (the Python API): validated as a file's would be, with its
    relative paths read from the working folder. Errors name `<mapping>` and the field. The
    mapping is not changed."""
    import copy

    path = Path(MAPPING)
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping (merge_method:, models:, ...)", where=MAPPING)
    return _validated(path, copy.deepcopy(data), {}, overrides)


MAPPING = "<mapping>"


def _validated(path: Path, data: Any, marks: Marks, overrides: tuple[str, ...]) -> LoadedRecipe:
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a YAML mapping (merge_method:, models:, ...)",
                          where=f"{path}:1:1")
    if not data and not overrides:
        raise RecipeError("the recipe is empty", where=str(path),
                          hint="a recipe needs at least merge_method: and models:")
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


def _read_text(path: Path) -> str:
    raw = read_recipe_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", where=f"{path}:{line}:{col}",
                          hint="save the recipe as UTF-8") from exc


def _from_pydantic(probe: LoadedRecipe, err: dict) -> RecipeError:
    loc = _data_loc(probe.data, err["loc"])
    if err["type"] == "missing":  # the missing key itself is not in the data
        loc = _data_loc(probe.data, err["loc"][:-1]) + err["loc"][-1:]
    message, hint = describe({**err, "loc": loc}, Recipe)
    if err["type"] in ("model_type", "dict_type") and loc[:1] == ("models",) and len(loc) == 2:
        value = err.get("input")
        hint = f"write a model entry as `- model: {value if isinstance(value, str) else 'path'}`"
    return probe.error(loc, message, hint)


def _data_loc(data: Any, loc: tuple) -> tuple:
    """pydantic puts union branch names ('float', 'list[float]', ...) into `loc`; keep the parts
    that are real keys or indices of the data."""
    out = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            continue
        out.append(part)
    return tuple(out)
