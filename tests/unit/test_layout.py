"""The layout's import rules (docs/architecture.md), read from the source with `ast`: no import
loops among prefkit's and the plugins' modules (imports inside functions count too), the core
never imports a plugin by name, and only the CLI layer imports click."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLICK_ALLOWED = ("prefkit.cli", "prefkit.commands")
# the pytest fixture `prefkit_cli` drives the command line in-process with click's CliRunner
CLICK_ALLOWED_MODULES = {"prefkit.testing.pytest_plugin"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "prefkit").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        parts = ("prefkit", "plugins", *path.relative_to(ROOT / "plugins").with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """Every module of `modules` this one imports, at any depth of the file: `from a import b`
    names module a.b when that is a module, else a (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of imports (as the module names in order, the first repeated), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_loops():
    graph = _graph()
    assert "prefkit.runner" in graph and "prefkit.plugins.ties" in graph  # the walk found them
    assert graph["prefkit.sweeps.point"] >= {"prefkit.runner"}  # imports inside functions count
    assert _cycle(graph) is None


def test_the_loop_finder_finds_loops():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_the_core_never_imports_a_plugin():
    for name, deps in _graph().items():
        if not name.startswith("prefkit.plugins"):
            assert not {d for d in deps if d.startswith("prefkit.plugins")}, name


def test_only_the_cli_imports_click():
    for name, path in _modules().items():
        if name.startswith(CLICK_ALLOWED) or name in CLICK_ALLOWED_MODULES:
            continue
        assert not {m for m in _imports(name, path, {}) if m.split(".")[0] == "click"}, name


def test_modules_and_functions_stay_small():
    """One owner per module: at most ~400 lines a module and ~60 a function (docs/architecture.md)."""
    big, long = [], []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > 410:
            big.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 65:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert big == [] and long == []


def test_nothing_below_the_resolver_reads_the_raw_recipe():
    """The Plan carries what the layers below need; `Plan.source` is provenance only."""
    from dataclasses import fields

    from prefkit.recipe.plan import Plan

    assert "loaded" not in {f.name for f in fields(Plan)}
    below = ("prefkit.engine", "prefkit.io", "prefkit.train", "prefkit.eval", "prefkit.moo",
             "prefkit.plugins")
    for name, path in _modules().items():
        if name.startswith(below):
            text = path.read_text()
            assert "loaded.recipe" not in text and "LoadedRecipe" not in text, name
