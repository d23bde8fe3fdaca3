"""Every first line of the bad-recipe corpus (tests/data/bad_recipes, whose headers
test_bad_recipes.py holds to the real output) reads in prefkit's style:

1. a location: `{recipe}:LINE:COL: field: ...` or `{recipe}: --set ...: field: ...`; without a
   field only for a file that does not load as a YAML mapping (`{recipe}:` or `{recipe}:L:C:`);
2. the offending value, where the recipe has a scalar there (read from the recipe at the
   field's path with the loader's own YAML reading);
3. a hint in a `(...)` tail, or the allowed range or choices (`allowed`, `use one of`,
   `must be`).

EXCEPTIONS below lists what is let off, with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prefkit.errors import RecipeError
from prefkit.recipe.loader import parse_yaml
from tests.reliability.test_bad_recipes import RECIPES, expectation

_LINE = re.compile(r"Error: \{recipe\}(?P<at>:\d+:\d+)?(?P<set>: --set [^:]+)?: "
                   r"(?:(?P<field>[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d+\])*): )?(?P<message>.*)")
_PATH_PART = re.compile(r"\.?([\w-]+)|\[(\d+)\]")

# Problems with a key itself (its name, or its place): the field names the offending key, and its
# value is not what is wrong.
KEY_PROBLEMS = ("unknown key", "unknown parameter", "given twice", "is shared by all models",
                "both given", "duplicate key", "is not supported by prefkit")

# corpus file -> (rule let off, why). Keep this short.
EXCEPTIONS = {
    "empty_file": ("location", "an empty file has no line to point at"),
}


def _parts(field: str) -> list:
    return [int(index) if index else name for name, index in _PATH_PART.findall(field)]


def _data(recipe: Path):
    """The recipe's data, or None when it does not load as a YAML mapping."""
    try:
        data, _ = parse_yaml(recipe.read_bytes().decode("utf-8"), recipe.name)
    except (RecipeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data else None


def _at(data, parts: list):
    for part in parts:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None, False
    return data, True


def _spellings(value) -> list[str]:
    """How a message may quote a scalar: the text itself, YAML's true/false, repr of a number."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (int, float)):
        return [repr(value), str(value)]
    return [str(value)]


def _lets_off(recipe: Path, rule: str) -> bool:
    return EXCEPTIONS.get(recipe.stem, ("", ""))[0] == rule


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_first_line_names_where_what_and_what_to_do(recipe):
    _, first = expectation(recipe)
    line = _LINE.fullmatch(first)
    assert line is not None, first
    field, message = line["field"], line["message"]
    data = _data(recipe)
    if not _lets_off(recipe, "location"):
        assert line["at"] or line["set"], f"no line:col or --set: {first}"
        assert field or data is None, f"a loadable recipe's problem names its field: {first}"
    if field and data is not None and not _lets_off(recipe, "value"):
        value, found = _at(data, _parts(field))
        scalar = found and isinstance(value, (str, int, float, bool))
        if scalar and not any(problem in message for problem in KEY_PROBLEMS):
            assert any(s in message for s in _spellings(value)), f"{value!r} not in: {first}"
    has_hint = re.search(r"\([^()]*(\([^()]*\)[^()]*)*\)$", message) is not None
    has_range = any(word in message for word in ("allowed", "use one of", "must be"))
    assert has_hint or has_range or _lets_off(recipe, "hint"), f"no hint or range: {first}"


def test_exceptions_are_few_and_real():
    names = {r.stem for r in RECIPES}
    assert len(EXCEPTIONS) <= 3
    assert set(EXCEPTIONS) <= names
