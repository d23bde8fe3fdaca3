"""Fixtures for the reliability tests: a CLI over a pinned set of plugins, so that error messages
that list methods and tasks do not change when other plugins are added."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.registry import load_registry

PINNED = ("linear", "task_arithmetic", "ties", "reference_tasks")


def pinned_registry():
    plugins = {name: importlib.import_module(f"prefkit.plugins.{name}") for name in PINNED}
    return load_registry(entry_points=False, plugins=plugins)


@pytest.fixture
def cli():
    return build_cli(pinned_registry)


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])
