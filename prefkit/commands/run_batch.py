"""`prefkit run`: the library runs the batch (`prefkit.batch.run_batch`: every recipe validated
first, then each run, going on after a failure); this prints one JSON line per recipe on stdout
and a sweep's methods table on stderr, and returns the worst exit code."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from prefkit.engine.executor import DEFAULT_SHARD_BYTES
from prefkit.errors import ExitCode, PrefkitError


def run_batch(recipes, registry, *, output, overrides, force, quiet,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES,
              report: Callable[[PrefkitError], None], sweep=None, allow_pickle: bool = False,
              allow_nonfinite: bool = False, threads: int | None = None,
              device: str = "cpu") -> int:
    """Run recipes; print one JSON line per recipe on stdout; return the worst exit code.
    A sweep recipe (preferences:/methods:) runs all its points, with `sweep` (SweepOptions)."""
    from prefkit import batch
    from prefkit.commands.report import methods_text
    from prefkit.runner import RunOptions, RunResult
    from prefkit.sweeps.run import describe

    options = RunOptions(max_shard_bytes=max_shard_bytes, allow_pickle=allow_pickle,
                         allow_nonfinite=allow_nonfinite, threads=threads, device=device,
                         quiet=quiet)
    worst = ExitCode.OK
    for path, result, error in batch.run_batch(recipes, registry, overrides=overrides,
                                               output=output, force=force, options=options,
                                               sweep=sweep):
        if error is None:
            if not isinstance(result, RunResult) and not quiet:  # a sweep: its methods table
                click.echo(methods_text(result.line["methods"]), err=True)
                click.echo(describe(result.line), err=True)
            click.echo(json.dumps({"recipe": path, **result.line}))
            continue
        report(error)
        worst = max(worst, error.exit_code)
        click.echo(json.dumps({"recipe": path, "status": "failed",
                               "exit_code": int(error.exit_code), "error": error.message}))
    return int(worst)
