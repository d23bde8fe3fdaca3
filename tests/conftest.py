"""Shared fixtures: a hermetic registry of the built-in plugins and tiny seeded checkpoint zoos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prefkit.registry import load_registry
from prefkit.testing import make_zoo

BUILTINS = ("linear", "task_arithmetic", "ties", "reference_tasks", "demo_tasks", "scalarization", "epo",
            "adamerging")


def builtin_plugins() -> dict:
    import importlib

    return {name: importlib.import_module(f"prefkit.plugins.{name}") for name in BUILTINS}


@pytest.fixture(scope="session")
def _prefkit_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefkit-cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, _prefkit_cache):
    """Tests never reach the network (the hub client uses its cache only) and never read or
    write the user's ~/.cache/prefkit (token and training caches are the session's own)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PREFKIT_CACHE", str(_prefkit_cache))


@pytest.fixture
def registry():
    """The built-in methods only, registered explicitly (independent of what is installed)."""
    return load_registry(entry_points=False, plugins=builtin_plugins())


@pytest.fixture(scope="session")
def _zoo_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    make_zoo(root / "zoo")
    make_zoo(root / "zoo_same", tasks={"a": 3, "b": 3, "c": 3}, base_head=True, seed=1)
    return root


@pytest.fixture
def workdir(_zoo_cache, tmp_path, monkeypatch) -> Path:
    """A fresh folder holding `zoo/` (reference heads 4/2/3/2, base without head) and `zoo_same/`
    (three 3-label models, base with head), as the working directory."""
    for name in ("zoo", "zoo_same"):
        (tmp_path / name).symlink_to(_zoo_cache / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def copy_zoo(_zoo_cache, tmp_path):
    """Copy a zoo into tmp_path so a test may damage it."""

    def copy(name: str = "zoo") -> Path:
        dest = tmp_path / f"{name}_copy"
        shutil.copytree(_zoo_cache / name, dest)
        return dest

    return copy
