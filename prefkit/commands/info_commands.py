"""The commands that list what is registered (CLI only): `methods`, `tasks` and `plugins`."""

from __future__ import annotations

import json
from typing import Any

import click

from prefkit.commands.clikit import CliState


def _print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def method_rows(registry: Any) -> list[dict[str, Any]]:
    """`prefkit methods --json`: every registered method, by name."""
    rows = []
    for name, reg in sorted(registry.methods.items()):
        m = reg.method
        rows.append({"name": name, "kind": m.kind, "aliases": list(getattr(m, "aliases", ())),
                     "plugin": reg.plugin, "distribution": reg.distribution,
                     "summary": m.summary, "reference_url": m.reference_url})
    return rows


def task_rows(registry: Any) -> list[dict[str, Any]]:
    """`prefkit tasks --json`: every registered task, by name."""
    return [{"name": name, "dataset": reg.task.dataset, "fields": list(reg.task.text_fields),
             "labels": list(reg.task.label_names), "splits": reg.task.splits,
             "metrics": list(reg.task.metrics), "plugin": reg.plugin,
             "summary": reg.task.summary, "source": reg.task.source}
            for name, reg in sorted(registry.tasks.items())]


def add_methods(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def methods(as_json: bool) -> None:
        """List every registered merge method and the plugin that provides it."""
        rows = method_rows(state.registry())
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        _print_table(("method", "kind", "plugin", "summary"), [
            (row["name"] + (f" ({', '.join(row['aliases'])})" if row["aliases"] else ""),
             row["kind"], row["plugin"], row["summary"]) for row in rows])


def add_tasks(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def tasks(as_json: bool) -> None:
        """List the registered tasks: dataset, labels, metrics and the plugin that provides each."""
        rows = task_rows(state.registry())
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        _print_table(("task", "dataset", "labels", "plugin", "summary"), [
            (row["name"], row["dataset"], ", ".join(row["labels"]), row["plugin"], row["summary"])
            for row in rows])


def add_plugins(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def plugins(as_json: bool) -> None:
        """List the plugins: distribution and version, the methods and tasks each provides, and
        why any failed to load."""
        from prefkit.commands.plugins_view import print_plugins

        print_plugins(state.registry(), as_json)
