"""The hook specification: the only place prefkit's hooks are declared.

A plugin is a module (or object) with functions marked by `prefkit.api.hookimpl` whose names match
the specs below, exposed through the `prefkit` entry-point group::

    [project.entry-points.prefkit]
    my_method = "prefkit_my_method"

pluggy calls each hook once, when the registry is built; it is never called inside the tensor loop.
A hook implementation whose name starts with ``prefkit_`` but matches no spec fails at load time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("prefkit")


@hookspec
def prefkit_register_methods(register: Callable[[Any], None]) -> None:
    """Register merge methods.

    Called once per plugin when the registry is built (`prefkit.registry.load_registry`).

    Args:
        register: call it once per method object, e.g. ``register(TiesMethod())``. A method object is
            an instance of `prefkit.api.TensorMethod` (or a later method kind) and carries its
            `name`, `kind`, `summary`, `reference_url`, its `Params` / `ModelParams` pydantic models
            and the `merge` function. The registry records which plugin registered it. Registering
            a name (or alias) that another plugin already registered raises `DuplicateMethodError`
            naming both plugins.

    Returns:
        Nothing; the return value is ignored.
    """


@hookspec
def prefkit_register_tasks(register: Callable[[Any], None]) -> None:
    """Register evaluation / training tasks.

    Called once per plugin when the registry is built.

    Args:
        register: call it once per task, e.g. ``register(Task(name="imdb", ...))`` with a
            `prefkit.api.Task`: its dataset (a `datasets` loader spec or a `loader` function),
            text field(s), label field and names, split names and metrics. The registry records
            which plugin registered it; a name registered by two plugins raises `PluginError`
            naming both.

    Returns:
        Nothing; the return value is ignored.
    """
