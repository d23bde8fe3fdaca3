"""`prefkit plugins`: every plugin the registry saw, what it provides, and why one failed."""

from __future__ import annotations

import json
from typing import Any

import click

from prefkit.registry import Registry


def plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """One row per plugin (loaded or failed), sorted by name.

    Each row: `name` (entry-point or ad-hoc name), `distribution` and `version` (None for a plugin
    not installed as a distribution), `methods` and `tasks` it registered, `hooks` it implements,
    and `error` (None, or the one-line reason it failed to load).
    """
    hooks: dict[str, list[str]] = {}
    for name, plugin in registry.pm.list_name_plugin():
        if plugin is None:  # blocked plugins stay listed by pluggy with no object
            continue
        hooks[name] = sorted(caller.name for caller in registry.pm.get_hookcallers(plugin) or [])
    rows = []
    for name in sorted({*hooks, *registry.failed}):
        dist_name, _, version = registry.distributions.get(name, "").rpartition(" ")
        rows.append({
            "name": name,
            "distribution": dist_name or None,
            "version": version or None,
            "methods": sorted(m for m, reg in registry.methods.items() if reg.plugin == name),
            "tasks": sorted(t for t, reg in registry.tasks.items() if reg.plugin == name),
            "hooks": hooks.get(name, []),
            "error": registry.failed.get(name),
        })
    return rows


def print_plugins(registry: Registry, as_json: bool) -> None:
    rows = plugin_rows(registry)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("plugin", "distribution", "methods", "tasks", "status")
    for row in rows:
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else "-"
        status = f"[red]failed: {row['error']}[/red]" if row["error"] else "ok"
        table.add_row(row["name"], dist, ", ".join(row["methods"]) or "-",
                      ", ".join(row["tasks"]) or "-", status)
    Console(width=160).print(table)
