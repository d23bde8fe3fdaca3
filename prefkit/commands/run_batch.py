"""`prefkit run`: validate every recipe first, then merge each, keep going after a failure."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from prefkit.errors import ExitCode, PrefkitError


def run_batch(recipes, registry, *, output, overrides, force, quiet, max_shard_bytes,
              report: Callable[[PrefkitError], None]) -> int:
    """Run recipes; print one JSON line per recipe on stdout; return the worst exit code."""
    from prefkit.executor import execute
    from prefkit.plan import check, resolve
    from prefkit.progress import NullReporter, RichReporter
    from prefkit.recipe import load_recipe

    checked = []
    for path in recipes:
        try:
            loaded = load_recipe(path, overrides)
            check(loaded, registry)
            checked.append((path, loaded, None))
        except PrefkitError as exc:
            checked.append((path, None, exc))
    worst = ExitCode.OK
    for path, loaded, error in checked:
        if error is None:
            try:
                plan = resolve(loaded, registry, output)
                reporter = NullReporter() if quiet else RichReporter()
                for note in plan.notes:
                    reporter.note(note)
                result = execute(plan, reporter=reporter, force=force,
                                 max_shard_bytes=max_shard_bytes)
                click.echo(json.dumps({
                    "recipe": path, "status": "ok", "output": str(result.output),
                    "method": plan.method.method.name, "tensors": result.tensors,
                    "bytes": result.bytes_written, "seconds": round(result.seconds, 3)}))
                continue
            except PrefkitError as exc:
                error = exc
        report(error)
        worst = max(worst, error.exit_code)
        click.echo(json.dumps({"recipe": path, "status": "failed",
                               "exit_code": int(error.exit_code), "error": error.message}))
    return int(worst)
