"""Finding a recipe parameter in a method's Params models: its owner (shared or per model), its
field and aliases, a validator for one value, and the value that applies to one tensor."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from prefkit.api import Params, TensorInfo
from prefkit.recipe.messages import translate, with_hint
from prefkit.recipe.settings import evaluate


@cache
def _leaf_adapter(params_cls: type, field: str) -> TypeAdapter:
    from typing import Annotated

    info = params_cls.model_fields[field]
    if not info.metadata:
        return TypeAdapter(info.annotation)
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])


def resolve_values(cls: type[Params], sources: list[dict[str, Any]], info: TensorInfo) -> dict:
    """Each parameter's value for one tensor from the first source whose setting applies."""
    values = {}
    for name in aliases(cls):
        validate = _leaf_adapter(cls, field_name(cls, name)).validate_python
        for settings in sources:
            setting = settings.get(name)
            value = None if setting is None else evaluate(setting, info.name, info.t, validate)
            if value is not None:
                values[name] = value
                break
    return values


def aliases(cls: type[Params]) -> list[str]:
    return [info.alias or name for name, info in cls.model_fields.items()]


def field_name(cls: type[Params], name: str) -> str:
    for field, info in cls.model_fields.items():
        if (info.alias or field) == name:
            return field
    return name


def owner_of(method, name: str) -> type[Params] | None:
    for cls in (method.Params, method.ModelParams):
        if name in aliases(cls):
            return cls
    return None


def leaf_checker(cls: type[Params], field: str):
    """A function that gives one value's problem (with its hint, in parentheses) or None."""
    adapter = _leaf_adapter(cls, field)
    info = cls.model_fields[field]

    def check(value: Any) -> str | None:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            return with_hint(*translate(exc.errors()[0], info, field))
        return None

    return check


