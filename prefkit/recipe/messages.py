"""pydantic's validation errors in prefkit's words: the value as the recipe gave it, what is wrong
with it, the allowed range or choices, and a hint (what to do) that the caller puts in
parentheses. One place for the recipe envelope (`loader`), method parameters (`resolve`,
`params`, `tensors`) and training settings, so that every message reads alike:

    preference[1]: -0.4 is negative; each entry must be a finite number from 0 to 1e6
    parameters.density: 1.5 is more than 1; must be a number from 0 to 1
    heads: 'paded' is not a choice; use one of: padded, per_task (did you mean 'padded'?)
"""

from __future__ import annotations

import re
import typing
from typing import Any

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from prefkit.bounds import PREFERENCE_ENTRY, number
from prefkit.errors import did_you_mean

# What to write instead, by key, for a value of the wrong kind or size.
VALUE_HINTS = {
    "merge_method": "give one method name, from `prefkit methods`; a sweep lists several under "
                    "methods:",
    "models": "write one `- model: <folder or hub id>` line per model",
    "model": "give a checkpoint folder or a hub id such as org/name",
    "lora": "give an adapter folder or hub id, or leave lora: out",
    "preference": "give one number per model, in the order of models:, e.g. [0.7, 0.3]",
    "output": "give one folder path, e.g. runs/merged",
    "labels": "list the label names in the model's output order, e.g. [negative, positive]",
    "label_names": "list the label names in the model's output order, e.g. [negative, positive]",
    "text_fields": "name the text column, or two for text pairs, e.g. [premise, hypothesis]",
    "parameters": "write one `name: value` line per parameter, e.g. density: 0.5",
    "tasks": "list task names, e.g. [imdb, ag_news]",
}
# What to do, by key, for a number out of range.
RANGE_HINTS = {"num_samples": "leave num_samples out to score every example"}
# What to add, by key, for a required key that is missing.
MISSING_HINTS = {
    "merge_method": "add merge_method: <name>; `prefkit methods` lists the installed methods",
    "models": "add models: with one `- model: <folder or hub id>` line per model",
    "model": "add model: <checkpoint folder or hub id> to this entry",
    "label_names": "add label_names: [...], the task's labels in the model's output order",
    "text_fields": "add text_fields: [<column>], the text column(s) of the data set",
    "dataset": "add dataset: <hub id, or csv / json / parquet with data_files:>",
}

# What each entry of a list field must be, by key (said instead of the list's hint).
ENTRY_RULES = {"preference": PREFERENCE_ENTRY}

_EXPECTED = {  # error type -> what the value must be
    "string_type": "text", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping of key: value lines", "model_type": "a mapping of key: value lines",
    "model_attributes_type": "a mapping of key: value lines",
    "float_type": "a number", "float_parsing": "a number",
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "finite_number": "a finite number",
}


def with_hint(message: str, hint: str | None) -> str:
    return f"{message} ({hint})" if hint else message


def show(value: Any, limit: int = 40) -> str:
    """The value as a recipe would spell it, shortened: 'abc', 0.5, true, [1, 2]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _got(value: Any) -> str:
    """`'zoo/a' is text`, `[1, 2] is a list`: a value of the wrong kind."""
    if value is None:
        return "no value is given"
    kind = ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
            else "text" if isinstance(value, str) else "a list" if isinstance(value, (list, tuple))
            else "a mapping" if isinstance(value, dict) else type(value).__name__)
    return f"{show(value)} is {kind}"


def describe(err: dict, model: type[BaseModel] | None = None) -> tuple[str, str | None]:
    """(message, hint) for one pydantic error; `model` is the pydantic model whose fields `loc`
    names (for the field's range, its choices and the known keys)."""
    loc = tuple(err.get("loc", ()))
    field, key = field_at(model, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key", known_keys_hint(model, loc)
    if kind == "missing":
        name = str(loc[-1]) if loc else "it"
        return "required key is missing", MISSING_HINTS.get(name, f"add {name}: here")
    return translate(err, field, key)


def translate(err: dict, field: FieldInfo | None = None,
              key: str | None = None) -> tuple[str, str | None]:
    """(message, hint) for one error of a value; `field` is the field the value is for (None
    for an entry of a list field), `key` the field's name (for its hint)."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    hint = VALUE_HINTS.get(key or "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return (f"{_number(value)} {_compared(kind, value, ctx)}; must be {_ranged(field, ctx)}",
                RANGE_HINTS.get(key or ""))
    if kind in ("too_short", "too_long"):
        return f"{_sized(value)}; must have {_length_range(field, ctx)}", hint
    if kind in ("string_too_short", "string_too_long"):
        return _string_length(value, ctx), hint
    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        close = did_you_mean(value, choices).strip() if isinstance(value, str) else ""
        return f"{show(value)} is not a choice; use one of: {', '.join(choices)}", close or None
    if kind in _EXPECTED:
        return _wrong_kind(kind, value, field, key, ctx)
    message = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error") or kind not in _PYDANTIC_TYPES:
        return message, None  # prefkit's own messages (and custom types) are already in its words
    return f"{show(value)} is not valid: {message[:1].lower()}{message[1:]}", hint


def _wrong_kind(kind: str, value: Any, field, key, ctx: dict) -> tuple[str, str | None]:
    expected, hint = _EXPECTED[kind], VALUE_HINTS.get(key or "")
    if kind in _NUMBER_TYPES:
        noun = ("a finite number" if kind == "finite_number"
                else "a whole number" if kind.startswith("int") else "a number")
        wrong = (_got(value) if kind.endswith("_type") and not isinstance(value, str)
                 else f"{show(value)} is not {noun}")
        if field is None and key in ENTRY_RULES:
            return f"{wrong}; {ENTRY_RULES[key]}", None
        bounded = _ranged(field, ctx, noun)
        if bounded == noun and wrong.endswith(noun):
            example = "3" if noun == "a whole number" else "0.5"
            return wrong, hint or f"write a number such as {example}, without quotes"
        return f"{wrong}; must be {bounded}", hint
    if kind == "bool_parsing" or (kind == "bool_type" and isinstance(value, str)):
        return f"{show(value)} is not true or false", "write true or false, without quotes"
    if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        hint = hint or f'quote it to use it as text: "{value}"'
    return f"{_got(value)}; must be {expected}", hint


_NUMBER_TYPES = ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float",
                 "finite_number")


def _number(value: Any) -> str:
    return value if isinstance(value, str) else show(value)


def _compared(kind: str, value: Any, ctx: dict) -> str:
    bound = next(iter(ctx.values()), None)
    try:
        equal = float(value) == float(bound)
    except (TypeError, ValueError):
        equal = False
    if kind == "greater_than_equal":
        return "is negative" if bound == 0 and not equal else f"is less than {_bound(bound)}"
    if kind == "greater_than":
        return f"is {'not more' if equal else 'less'} than {_bound(bound)}"
    if kind == "less_than":
        return f"is {'not less' if equal else 'more'} than {_bound(bound)}"
    return f"is more than {_bound(bound)}"


def _bound(x: Any) -> str:
    return number(x) if isinstance(x, float) else str(x)


def _limits(field: FieldInfo | None, ctx: dict) -> dict[str, Any]:
    """The field's bounds (ge, gt, le, lt, min_length, max_length), with those of the error."""
    names = ("ge", "gt", "le", "lt", "min_length", "max_length")
    out: dict[str, Any] = {}
    for meta in field.metadata if field is not None else ():
        if isinstance(meta, at.BaseMetadata):
            out.update({n: getattr(meta, n) for n in names if hasattr(meta, n)})
    out.update({k: v for k, v in ctx.items() if k in names})
    return out


def _ranged(field: FieldInfo | None, ctx: dict, noun: str | None = None) -> str:
    """`a number from 0 to 1`, `a whole number of at least 1`, `a number above 0`."""
    noun = noun or _noun(field)
    lim = _limits(field, ctx)
    if "ge" in lim and "le" in lim:
        return f"{noun} from {_bound(lim['ge'])} to {_bound(lim['le'])}"
    parts = [f"at least {_bound(lim['ge'])}" if "ge" in lim else "",
             f"above {_bound(lim['gt'])}" if "gt" in lim else "",
             f"at most {_bound(lim['le'])}" if "le" in lim else "",
             f"below {_bound(lim['lt'])}" if "lt" in lim else ""]
    text = " and ".join(p for p in parts if p)
    return f"{noun} of {text}" if text.startswith("at ") else f"{noun} {text}".strip()


def _noun(field: FieldInfo | None) -> str:
    types = set(typing.get_args(field.annotation)) | {field.annotation} if field else set()
    if any(t is not None and isinstance(t, type) and issubclass(t, float) for t in types):
        return "a number"
    if any(t is not None and isinstance(t, type) and issubclass(t, int) and t is not bool for t in types):
        return "a whole number"
    return "a number"


def _sized(value: Any) -> str:
    if isinstance(value, (list, tuple, dict, str)) and not value:
        return f"{show(value)} is empty"
    n = len(value) if isinstance(value, (list, tuple, dict, str)) else 0
    return f"{show(value)} has {n} {'entry' if n == 1 else 'entries'}"


def _length_range(field: FieldInfo | None, ctx: dict) -> str:
    lim = _limits(field, ctx)
    lo, hi = lim.get("min_length"), lim.get("max_length")
    if lo is not None and hi is not None:
        return f"{lo} to {hi} entries" if lo != hi else f"{lo} {'entry' if lo == 1 else 'entries'}"
    n = lo if lo is not None else hi
    return f"at {'least' if lo is not None else 'most'} {n} {'entry' if n == 1 else 'entries'}"


def _string_length(value: Any, ctx: dict) -> str:
    if "min_length" in ctx:
        if ctx["min_length"] == 1:
            return f"{show(value)} is empty; must be non-empty text"
        return f"{show(value)} is too short; must be at least {ctx['min_length']} characters"
    return f"{show(value)} is {len(str(value))} characters; must be at most {ctx['max_length']}"


# -- fields of a model, by the `loc` of an error ---------------------------------------------------
def field_at(model: type[BaseModel] | None, loc: tuple) -> tuple[FieldInfo | None, str | None]:
    """The field the value at `loc` is for, and the key's name: (None, name) for an entry of a
    list or mapping field, whose bounds are not the field's. List indices, mapping keys (a
    task's name) and pydantic's union branch names are passed over."""
    field, key = None, None
    for part in loc:
        fields = model.model_fields if model is not None else {}
        if isinstance(part, str) and part in fields:
            field, key = fields[part], part
            model = _inner_model(field.annotation)
        elif field is not None and isinstance(part, int):
            field = None  # an entry of the list: the field's bounds are the list's
    return field, key


def known_keys_hint(model: type[BaseModel] | None, loc: tuple) -> str:
    """`did you mean 'task'? allowed here: ...` for an unknown key at `loc`."""
    if not loc:
        return "check the spelling"
    for part in loc[:-1]:  # list indices and dict keys (e.g. a task's name) keep the model
        field = model.model_fields.get(part) if model is not None else None
        if field is not None:
            model = _inner_model(field.annotation)
    if model is None:
        return "check the spelling"
    allowed = sorted(model.model_fields)
    return did_you_mean(loc[-1], allowed) + f"allowed here: {', '.join(allowed)}"


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None`, `list[X]` or `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _pydantic_types() -> frozenset:
    from pydantic_core.core_schema import ErrorType

    return frozenset(typing.get_args(ErrorType))


_PYDANTIC_TYPES = _pydantic_types()
