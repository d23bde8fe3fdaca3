"""Fixtures for the reliability tests: a CLI over a pinned set of plugins, so that error messages
that list methods and tasks do not change when other plugins are added."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.registry import load_registry

# A small valid TIES recipe over the `zoo_same` zoo (three 3-label models, base with head).
SAME_ZOO_TIES = """\
merge_method: ties
base_model: zoo_same/base
models:
  - model: zoo_same/a
    task: alpha
  - model: zoo_same/b
    task: beta
parameters: {density: 0.5}
preference: [0.6, 0.4]
"""

PINNED = ("linear", "task_arithmetic", "ties", "reference_tasks")


def pinned_registry():
    plugins = {name: importlib.import_module(f"prefkit.plugins.{name}") for name in PINNED}
    return load_registry(entry_points=False, plugins=plugins)


@pytest.fixture
def cli():
    return build_cli(pinned_registry)


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])
