"""`prefkit run` / `prefkit validate` of a sweep recipe: check every point, run the sweep, print
its methods table on stderr. A recipe that is not a sweep is checked exactly as before."""

from __future__ import annotations

from typing import Any

import click

from prefkit.sweeps import SweepOptions, is_sweep


def check_recipe(loaded, registry, options: SweepOptions | None = None) -> None:
    """Checks that need no checkpoint, for a sweep (every point) or a plain recipe.

    Raises:
        RecipeError / RecipeErrors: located in the recipe file.
    """
    from prefkit.recipe.plan import check
    from prefkit.sweeps.points import check_plain, check_sweep

    if is_sweep(loaded):
        check_sweep(loaded, registry)
        return
    check_plain(loaded)
    if options is not None and not options.is_default:
        raise loaded.error((), "--executor, --workers and --evaluate-only apply to sweeps only",
                           "add preferences: (or methods:) to make this recipe a sweep")
    check(loaded, registry)


def reject_sweep(loaded, command: str) -> None:
    """`prefkit plan` shows one merge; a sweep has one per point."""
    if is_sweep(loaded):
        raise loaded.error((), f"{command} takes one merge, and this recipe is a sweep",
                           "run `prefkit run` on it, then `prefkit plan` on one of its "
                           "<output>/points/*/recipe.yaml")


def run_sweep_recipe(loaded, registry, *, output, force: bool, quiet: bool,
                     options: SweepOptions) -> dict[str, Any]:
    """Run a sweep with the recipe's logging: settings (the command line's win)."""
    from prefkit.commands.report import methods_text
    from prefkit.sweeps.logs import configure_logging
    from prefkit.sweeps.run import describe, run_sweep

    spec = loaded.recipe.logging
    configure_logging(options.log_level or (spec.level if spec else "info"),
                      options.log_format or (spec.format if spec else "simple"),
                      options.log_file or (spec.file if spec else None), quiet=quiet)
    line = run_sweep(loaded, registry, output=output, force=force, options=options, quiet=quiet)
    if not quiet:
        click.echo(methods_text(line["methods"]), err=True)
        click.echo(describe(line), err=True)
    return line
