"""Plugin discovery: pluggy loads the `prefkit` entry points once; a dict dispatches by name.

Code reaches prefkit only from installed entry points and, for one-off experiments, from the
`*.py` files of an explicit `--plugins-dir` (`load_plugins_dir` + `add_plugins`). Recipes name
registered methods and tasks, never import paths.

Environment:
    PREFKIT_LOAD_PLUGINS: comma-separated entry-point names to load (unset: all; "": none).
    PREFKIT_DISABLE_PLUGINS: comma-separated entry-point names to skip.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from prefkit import hookspecs
from prefkit.errors import (
    DuplicateMethodError,
    PluginError,
    PrefkitError,
    UnknownMethodError,
    UnknownTaskError,
    did_you_mean,
)

ENTRY_POINT_GROUP = "prefkit"


@dataclass(frozen=True)
class RegisteredMethod:
    method: Any
    plugin: str  # the plugin (entry-point) name that registered it
    distribution: str  # "name version" of the installed distribution, or "" for ad-hoc plugins


@dataclass(frozen=True)
class RegisteredTask:
    task: Any
    plugin: str
    distribution: str


@dataclass
class Registry:
    """Methods and tasks by name, with the plugin that provided each; plugins that failed to load."""

    pm: pluggy.PluginManager
    methods: dict[str, RegisteredMethod] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, RegisteredTask] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # plugin -> error line
    # plugin -> "name version" of its installed distribution ("" for ad-hoc plugins)
    distributions: dict[str, str] = field(default_factory=dict)

    def task(self, name: str) -> RegisteredTask:
        if name in self.tasks:
            return self.tasks[name]
        hint = did_you_mean(name, self.tasks)
        raise UnknownTaskError(
            f"unknown task {name!r}",
            hint=hint + f"registered: {', '.join(sorted(self.tasks)) or 'none'}; "
            "run `prefkit tasks`, or define the task inline in the recipe",
        )

    def get(self, name: str) -> RegisteredMethod:
        canonical = self.aliases.get(name, name)
        if canonical in self.methods:
            return self.methods[canonical]
        known = sorted([*self.methods, *self.aliases])
        hint = did_you_mean(name, known) + f"installed: {', '.join(sorted(self.methods)) or 'none'}"
        if self.failed:
            hint += f"; plugins that failed to load: {', '.join(sorted(self.failed))}"
        raise UnknownMethodError(
            f"unknown merge method {name!r}",
            hint=hint + "; is the plugin installed? run `prefkit plugins`",
        )


def _selected(name: str) -> bool:
    only = os.environ.get("PREFKIT_LOAD_PLUGINS")
    if only is not None and name not in {n.strip() for n in only.split(",") if n.strip()}:
        return False
    disabled = os.environ.get("PREFKIT_DISABLE_PLUGINS", "")
    return name not in {n.strip() for n in disabled.split(",")}


def load_registry(
    *, entry_points: bool = True, plugins: dict[str, ModuleType | object] | None = None
) -> Registry:
    """Build a registry from installed entry points plus explicitly given plugin objects.

    A plugin that fails to import is recorded in `Registry.failed` and does not stop the others.
    A hook implementation that matches no hook spec (e.g. a misspelled name) raises PluginError.
    """
    pm = pluggy.PluginManager("prefkit")
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm=pm)
    distributions = registry.distributions
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if not _selected(ep.name) or pm.has_plugin(ep.name):
                continue
            dist = ep.dist
            distributions[ep.name] = f"{dist.name} {dist.version}" if dist else ""
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                registry.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            _register_plugin(pm, ep.name, module)
    for name, plugin in (plugins or {}).items():
        _register_plugin(pm, name, plugin)
    _check_pending(pm)
    for impl in pm.hook.prefkit_register_methods.get_hookimpls():
        _call_register(registry, impl, distributions.get(impl.plugin_name, ""))
    for impl in pm.hook.prefkit_register_tasks.get_hookimpls():
        _call_register_tasks(registry, impl, distributions.get(impl.plugin_name, ""))
    return registry


def _call_register_tasks(registry: Registry, impl: pluggy.HookImpl, distribution: str) -> None:
    plugin = impl.plugin_name

    def register(task: Any) -> None:
        for attr in ("name", "dataset", "text_fields", "label_names"):
            if not hasattr(task, attr):
                raise PluginError(f"plugin {plugin!r} registered {task!r}, which has no {attr!r}",
                                  plugin=plugin, hint="register a prefkit.api.Task")
        other = registry.tasks.get(task.name)
        if other is not None:
            raise PluginError(f"task {task.name!r} is registered by both plugin {other.plugin!r} "
                              f"and plugin {plugin!r}", plugin=plugin,
                              hint="uninstall one of them or block it with PREFKIT_DISABLE_PLUGINS")
        registry.tasks[task.name] = RegisteredTask(task, plugin, distribution)

    _run_hook(registry, impl, register)


def _run_hook(registry: Registry, impl: pluggy.HookImpl, register: Any) -> None:
    """Call one plugin's registration hook. An unexpected exception inside it marks that plugin
    as failed (what it registered is dropped) instead of breaking every other plugin; contract
    errors (duplicate names, objects that are not methods) stay errors."""
    try:
        impl.function(register=register)
    except PrefkitError:
        raise
    except Exception as exc:
        plugin = impl.plugin_name
        registry.failed[plugin] = f"{type(exc).__name__}: {exc}"
        registry.methods = {n: r for n, r in registry.methods.items() if r.plugin != plugin}
        registry.aliases = {a: n for a, n in registry.aliases.items() if n in registry.methods}
        registry.tasks = {n: r for n, r in registry.tasks.items() if r.plugin != plugin}


def _register_plugin(pm: pluggy.PluginManager, name: str, plugin: object) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r}: {exc}", plugin=name) from exc
    except ValueError as exc:  # pluggy: plugin name or object already registered
        raise PluginError(f"plugin {name!r} registered twice: {exc}", plugin=name) from exc


def _call_register(registry: Registry, impl: pluggy.HookImpl, distribution: str) -> None:
    plugin = impl.plugin_name

    def register(method: Any) -> None:
        entry = {"trainer": ("task_weights",), "solver": ("solve", "merge")}.get(
            getattr(method, "kind", None), ("merge",))
        for attr in ("name", "kind", *entry):
            if not hasattr(method, attr):
                raise PluginError(
                    f"plugin {plugin!r} registered {method!r}, which has no {attr!r}",
                    plugin=plugin,
                    hint="register an instance of a prefkit.api method class",
                )
        for name in (method.name, *getattr(method, "aliases", ())):
            other = registry.methods.get(registry.aliases.get(name, name))
            if other is not None:
                raise DuplicateMethodError(
                    f"method {name!r} is registered by both plugin {other.plugin!r} "
                    f"and plugin {plugin!r}",
                    plugin=plugin,
                    hint="uninstall one of them or block it with PREFKIT_DISABLE_PLUGINS",
                )
        registry.methods[method.name] = RegisteredMethod(method, plugin, distribution)
        for alias in getattr(method, "aliases", ()):
            registry.aliases[alias] = method.name

    _run_hook(registry, impl, register)


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc), plugin=exc.plugin_name if hasattr(exc, "plugin_name") else "",
                          hint="rename the function to a hook in prefkit.hookspecs") from exc


def load_plugins_dir(folder: str | Path) -> dict[str, ModuleType]:
    """Import every `*.py` file of `folder` as a plugin module named after the file
    (datasette's `--plugins-dir`). A file that fails to import is a PluginError naming it."""
    plugins: dict[str, ModuleType] = {}
    for file in sorted(Path(folder).glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"prefkit_plugins_dir.{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginError(f"{file}: the plugin failed to import ({type(exc).__name__}: {exc})",
                              plugin=file.stem, hint="fix the file or remove it from --plugins-dir"
                              ) from exc
        plugins[file.stem] = module
    return plugins


def add_plugins(registry: Registry, plugins: dict[str, ModuleType | object]) -> None:
    """Register more plugin objects into a loaded registry (their hooks only are called)."""
    for name, plugin in plugins.items():
        _register_plugin(registry.pm, name, plugin)
    _check_pending(registry.pm)
    for impl in registry.pm.hook.prefkit_register_methods.get_hookimpls():
        if impl.plugin_name in plugins:
            _call_register(registry, impl, "")
    for impl in registry.pm.hook.prefkit_register_tasks.get_hookimpls():
        if impl.plugin_name in plugins:
            _call_register_tasks(registry, impl, "")
