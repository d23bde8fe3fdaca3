"""The commands that read recipes (CLI only): `validate`, `plan`, `run` and `fetch`."""

from __future__ import annotations

import sys

import click

from prefkit.commands.clikit import ALLOW_PICKLE_HELP, CliState, parse_shard_size, report_error
from prefkit.errors import ExitCode, PrefkitError

OVERRIDE_HELP = "Override a recipe key, e.g. parameters.density=0.3 or preference=[0.8,0.2]."


def add_validate(cli: click.Group, state: CliState) -> None:
    @cli.command()
    # click.Path(dir_okay=False) would print a 4-line usage error: the loader says it in one
    @click.argument("recipes", nargs=-1, required=True, type=click.Path())
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=OVERRIDE_HELP)
    def validate(recipes: tuple[str, ...], overrides: tuple[str, ...]) -> None:
        """Check recipes (schema, method, parameters, preference) without reading any model."""
        from prefkit.commands.sweep_run import check_recipe
        from prefkit.recipe import load_recipe

        worst = ExitCode.OK
        for path in recipes:
            try:
                check_recipe(load_recipe(path, overrides), state.registry())
                click.echo(f"{path}: ok")
            except PrefkitError as exc:
                report_error(exc)
                worst = max(worst, exc.exit_code)
        if worst:
            sys.exit(worst)


def add_plan(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.argument("recipe", type=click.Path())
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
    @click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder.")
    @click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
    @click.option("--allow-pickle", is_flag=True, help=ALLOW_PICKLE_HELP)
    def plan(recipe: str, overrides: tuple[str, ...], output: str | None, as_json: bool,
             allow_pickle: bool) -> None:
        """Show which tensors a recipe merges, from which files, shapes, bytes and parameters."""
        from prefkit.commands.plan_view import print_plan
        from prefkit.commands.sweep_run import reject_sweep
        from prefkit.recipe import load_recipe
        from prefkit.recipe.resolve import resolve

        loaded = load_recipe(recipe, overrides)
        reject_sweep(loaded, "plan")
        print_plan(resolve(loaded, state.registry(), output, allow_pickle=allow_pickle), as_json)


def _run_options(command):
    """`run`'s options, in their --help order."""
    options = [
        click.option("-o", "--output", type=click.Path(file_okay=False),
                     help="Output folder (one recipe only); default: the recipe's output:."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=OVERRIDE_HELP),
        click.option("--force", is_flag=True, help="Replace an existing output folder."),
        click.option("-q", "--quiet", is_flag=True, help="No progress output."),
        click.option("--max-shard-size", default="5GB", show_default=True,
                     callback=lambda c, p, v: parse_shard_size(v),
                     help="Largest output shard (4KB to 1TB)."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True,
                     help="Sweeps: run points in local processes or on Ray (prefkit[ray])."),
        click.option("--workers", type=click.IntRange(min=0),
                     help="Sweeps: points run at once (default 1; 0 = in this process)."),
        click.option("--evaluate-only", is_flag=True,
                     help="Sweeps: re-score stored models, never merge."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                     help="Log level (default: the recipe's logging:, else info)."),
        click.option("--log-format", type=click.Choice(["simple", "detailed", "json"]),
                     help="Log record format on stderr and in --log-file."),
        click.option("--log-file", type=click.Path(dir_okay=False),
                     help="Also append log records here."),
        click.option("--allow-pickle", is_flag=True, help=ALLOW_PICKLE_HELP),
        click.option("--allow-nonfinite", is_flag=True,
                     help="Merge input tensors that hold NaN or Inf (refused by default)."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Threads for the merge arithmetic and for reading inputs; default: all "
                     "cores. Outputs do not depend on it."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True, help="Where the merge arithmetic runs (cuda: a GPU, "
                     "inputs staged in pinned memory)."),
    ]
    for option in reversed(options):  # decorators apply bottom-up
        command = option(command)
    return command


def add_run(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.argument("recipes", nargs=-1, required=True, type=click.Path())
    @_run_options
    def run(recipes, output, overrides, force, quiet, max_shard_size, executor, workers,
            evaluate_only, log_level, log_format, log_file, allow_pickle, allow_nonfinite,
            threads, device) -> None:
        """Merge each recipe; one JSON result line per recipe on stdout.

        All recipes are validated first; a failing recipe does not stop the others, and the exit
        code is the worst one. A sweep recipe (preferences:, methods:) runs every point.
        """
        from prefkit.commands.run_batch import run_batch
        from prefkit.sweeps import SweepOptions

        sweep = SweepOptions(executor, workers, evaluate_only, log_level, log_format, log_file)
        if log_level or log_format or log_file:
            from prefkit.sweeps.logs import configure_logging

            configure_logging(log_level or "info", log_format or "simple", log_file, quiet=quiet)

        if output and len(recipes) > 1:
            raise click.UsageError("-o/--output takes one recipe; set output: in each recipe instead")
        if device != "cpu":  # before any recipe runs
            from prefkit.engine.slabs import check_device

            check_device(device)
        code = run_batch(recipes, state.registry(), output=output, overrides=overrides,
                         force=force, quiet=quiet, max_shard_bytes=max_shard_size,
                         report=report_error, sweep=sweep, allow_pickle=allow_pickle,
                         allow_nonfinite=allow_nonfinite, threads=threads, device=device)
        if code:
            sys.exit(code)


def add_fetch(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.argument("recipes", nargs=-1, required=True, type=click.Path())
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
    @click.option("--no-datasets", is_flag=True, help="Models and adapters only.")
    @click.option("--allow-pickle", is_flag=True, help=ALLOW_PICKLE_HELP)
    def fetch(recipes, overrides, no_datasets, allow_pickle) -> None:
        """Download every model, adapter and dataset the recipes need into the local caches
        (with --offline: check that they are there). One JSON line per item on stdout."""
        from prefkit.commands.fetch import fetch_recipes

        code = fetch_recipes(recipes, state.registry(), overrides=overrides,
                             datasets=not no_datasets, allow_pickle=allow_pickle,
                             report=report_error)
        if code:
            sys.exit(code)
