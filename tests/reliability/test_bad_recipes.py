"""The bad-recipe corpus (tests/data/bad_recipes): every file fails with its documented first line,
one `Error: <file>...` line per problem, no traceback, and nothing written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import invoke

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_recipes"
RECIPES = sorted(CORPUS.glob("*.yaml"))


def expectation(recipe: Path) -> tuple[int, str]:
    """(exit code, expected first stderr line) from the file's header comments."""
    lines = recipe.read_bytes().decode("utf-8", errors="replace").splitlines()
    assert lines[0].startswith("# Bad recipe: "), recipe.name
    assert lines[1].startswith("# exit: ") and lines[2].startswith("# first line: "), recipe.name
    return int(lines[1].removeprefix("# exit: ")), lines[2].removeprefix("# first line: ")


def matches(expected: str, actual: str) -> bool:
    """Exact, except that `…` stands for any text (the lists of allowed keys)."""
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual) is not None


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under `folder` (following the zoo links) with its size."""
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_is_large_and_documented():
    assert len(RECIPES) >= 40
    codes = [expectation(r)[0] for r in RECIPES]
    assert all(code != 0 for code in codes)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_bad_recipe_fails_cleanly(cli, workdir, recipe):
    code, first = expectation(recipe)
    name = recipe.name
    shutil.copyfile(recipe, workdir / name)
    for key, value in {"{recipe}": name, "{dir}": workdir, "{zoo}": (workdir / "zoo").resolve()}.items():
        first = first.replace(key, str(value))
    before = snapshot(workdir)
    for command in (["run", name, "-q"], ["plan", name], ["validate", name]):
        result = invoke(cli, *command)
        if command[0] == "validate" and result.exit_code == 0:
            assert result.stdout == f"{name}: ok\n"  # found only by reading the checkpoints
            continue
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == code, (command, result.stderr)
        lines = result.stderr.splitlines()
        assert matches(first, lines[0]), (command, lines[0], first)
        assert all(line.startswith(f"Error: {name}") for line in lines), lines
        assert "Traceback" not in result.stderr
        assert result.stdout.strip() == "" or command[0] == "run"
        assert snapshot(workdir) == before, command
