"""The `prefkit` command line: parses, calls the library, prints. No merge logic lives here."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import click

import prefkit
from prefkit.errors import ExitCode, PrefkitError, RecipeErrors

RegistryFactory = Callable[[], "prefkit.registry.Registry"]
ALLOW_PICKLE_HELP = ("Read pickle checkpoints (pytorch_model.bin), which can run code when loaded; "
                     "only for files you trust (read with torch.load(weights_only=True)).")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000` → bytes."""
    match = _SIZE.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size such as 5GB or 500MB")
    number, unit = float(match.group(1)), match.group(2).upper()
    base = 1024 if "I" in unit else 1000
    power = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("B").rstrip("I") or ""]
    return int(number * base**power)


def _default_registry():
    from prefkit.registry import load_registry

    return load_registry()


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def build_cli(registry_factory: RegistryFactory = _default_registry) -> click.Group:
    """The click group; tests pass their own registry factory (no global state)."""
    cache: dict[str, object] = {}

    def registry():
        if "registry" not in cache:
            cache["registry"] = registry_factory()
            if cache.get("plugins_dir"):
                from prefkit.registry import add_plugins, load_plugins_dir

                add_plugins(cache["registry"], load_plugins_dir(cache["plugins_dir"]))
            for plugin, error in cache["registry"].failed.items():
                _echo_err(f"Warning: plugin {plugin!r} failed to load: {error}")
        return cache["registry"]

    @click.group(cls=_PrefkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(prefkit.__version__, prog_name="prefkit")
    @click.option("--traceback", is_flag=True, help="Show the full traceback of errors.")
    @click.option("--plugins-dir", type=click.Path(exists=True, file_okay=False),
                  help="Also load every *.py file in this folder as a plugin (one-off plugins).")
    @click.option("--offline", is_flag=True,
                  help="Never reach the Hugging Face hub: use its cache only (HF_HUB_OFFLINE=1).")
    def cli(traceback: bool, plugins_dir: str | None, offline: bool) -> None:
        """Merge fine-tuned models for a preference over tasks.

        Recipes are mergekit YAML plus prefkit's keys (task, preference, heads, output).
        """
        if cache.get("plugins_dir") != plugins_dir:  # one CLI object, invoked again (tests)
            cache.pop("registry", None)
        cache["plugins_dir"] = plugins_dir
        if offline:
            from prefkit.io.hub import offline_mode

            click.get_current_context().with_resource(offline_mode())

    @cli.command()
    @click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a recipe key, e.g. parameters.density=0.3 or preference=[0.8,0.2].")
    def validate(recipes: tuple[str, ...], overrides: tuple[str, ...]) -> None:
        """Check recipes (schema, method, parameters, preference) without reading any model."""
        from prefkit.commands.sweep_run import check_recipe
        from prefkit.recipe import load_recipe

        worst = ExitCode.OK
        for path in recipes:
            try:
                check_recipe(load_recipe(path, overrides), registry())
                click.echo(f"{path}: ok")
            except PrefkitError as exc:
                _report(exc)
                worst = max(worst, exc.exit_code)
        if worst:
            sys.exit(worst)

    @cli.command()
    @click.argument("recipe", type=click.Path(dir_okay=False))
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
        from prefkit.recipe.plan import resolve

        loaded = load_recipe(recipe, overrides)
        reject_sweep(loaded, "plan")
        print_plan(resolve(loaded, registry(), output, allow_pickle=allow_pickle), as_json)

    @cli.command()
    @click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
    @click.option("-o", "--output", type=click.Path(file_okay=False),
                  help="Output folder (one recipe only); default: the recipe's output:.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a recipe key, e.g. parameters.density=0.3 or preference=[0.8,0.2].")
    @click.option("--force", is_flag=True, help="Replace an existing output folder.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress output.")
    @click.option("--max-shard-size", default="5GB", show_default=True,
                  callback=lambda c, p, v: parse_size(v), help="Largest output shard.")
    @click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                  help="Sweeps: run points in local processes or on Ray (prefkit[ray]).")
    @click.option("--workers", type=click.IntRange(min=0),
                  help="Sweeps: points run at once (default 1; 0 = in this process).")
    @click.option("--evaluate-only", is_flag=True, help="Sweeps: re-score stored models, never merge.")
    @click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                  help="Log level (default: the recipe's logging:, else info).")
    @click.option("--log-format", type=click.Choice(["simple", "detailed", "json"]),
                  help="Log record format on stderr and in --log-file.")
    @click.option("--log-file", type=click.Path(dir_okay=False), help="Also append log records here.")
    @click.option("--allow-pickle", is_flag=True, help=ALLOW_PICKLE_HELP)
    @click.option("--allow-nonfinite", is_flag=True,
                  help="Merge input tensors that hold NaN or Inf (refused by default).")
    @click.option("--threads", type=click.IntRange(min=1), help="Threads for the merge arithmetic "
                  "and for reading inputs; default: all cores. Outputs do not depend on it.")
    @click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                  help="Where the merge arithmetic runs (cuda: a GPU, inputs staged in pinned memory).")
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
        code = run_batch(recipes, registry(), output=output, overrides=overrides, force=force,
                         quiet=quiet, max_shard_bytes=max_shard_size, report=_report, sweep=sweep,
                         allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite,
                         threads=threads, device=device)
        if code:
            sys.exit(code)

    @cli.command()
    @click.argument("folder", type=click.Path(file_okay=False))
    @click.option("--metric", default="accuracy", show_default=True, help="The score of each task.")
    @click.option("--reference", help="Hypervolume reference: one value, or one per task "
                  "(comma-separated); default 0.")
    @click.option("--no-plots", is_flag=True, help="Write report.md only.")
    @click.option("-q", "--quiet", is_flag=True, help="No table on stderr.")
    def report(folder, metric, reference, no_plots, quiet) -> None:
        """Rebuild a sweep's report.md and plots from its results.jsonl; JSON on stdout."""
        from prefkit.commands.report import parse_reference, report_command

        result = report_command(folder, metric=metric, reference=parse_reference(reference),
                                plots=not no_plots, quiet=quiet)
        click.echo(json.dumps(result, indent=2))

    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def methods(as_json: bool) -> None:
        """List every registered merge method and the plugin that provides it."""
        rows = []
        for name, reg in sorted(registry().methods.items()):
            m = reg.method
            rows.append({"name": name, "kind": m.kind, "aliases": list(getattr(m, "aliases", ())),
                         "plugin": reg.plugin, "distribution": reg.distribution,
                         "summary": m.summary, "reference_url": m.reference_url})
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("method", "kind", "plugin", "summary")
        for row in rows:
            aliases = f" ({', '.join(row['aliases'])})" if row["aliases"] else ""
            table.add_row(row["name"] + aliases, row["kind"], row["plugin"], row["summary"])
        Console(width=160).print(table)

    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def tasks(as_json: bool) -> None:
        """List the registered tasks: dataset, labels, metrics and the plugin that provides each."""
        rows = [{"name": name, "dataset": reg.task.dataset, "fields": list(reg.task.text_fields),
                 "labels": list(reg.task.label_names), "splits": reg.task.splits,
                 "metrics": list(reg.task.metrics), "plugin": reg.plugin,
                 "summary": reg.task.summary, "source": reg.task.source}
                for name, reg in sorted(registry().tasks.items())]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("task", "dataset", "labels", "plugin", "summary")
        for row in rows:
            table.add_row(row["name"], row["dataset"], ", ".join(row["labels"]), row["plugin"],
                          row["summary"])
        Console(width=160).print(table)

    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def plugins(as_json: bool) -> None:
        """List the plugins: distribution and version, the methods and tasks each provides, and
        why any failed to load."""
        from prefkit.commands.plugins_view import print_plugins

        print_plugins(registry(), as_json)

    @cli.command()
    @click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
    @click.option("--no-datasets", is_flag=True, help="Models and adapters only.")
    @click.option("--allow-pickle", is_flag=True, help=ALLOW_PICKLE_HELP)
    def fetch(recipes, overrides, no_datasets, allow_pickle) -> None:
        """Download every model, adapter and dataset the recipes need into the local caches
        (with --offline: check that they are there). One JSON line per item on stdout."""
        from prefkit.commands.fetch import fetch_recipes

        code = fetch_recipes(recipes, registry(), overrides=overrides, datasets=not no_datasets,
                             allow_pickle=allow_pickle, report=_report)
        if code:
            sys.exit(code)

    @cli.command("eval")
    @click.argument("model", type=click.Path(file_okay=False))
    @click.option("--tasks", "task_names", help="Comma-separated tasks; default: the merged models' tasks.")
    @click.option("--split", default="test", show_default=True,
                  type=click.Choice(["train", "validation", "test"]))
    @click.option("--num-samples", type=click.IntRange(min=1), help="Score a seeded subset of this size.")
    @click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
    @click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=8))
    @click.option("--device", default="auto", show_default=True,
                  type=click.Choice(["auto", "cpu", "cuda", "mps"]))
    @click.option("--seed", default=0, show_default=True, help="Seed of the example subset.")
    @click.option("--heads", type=click.Choice(["padded", "per_task"]),
                  help="Default: as the model was merged.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress output.")
    @click.option("--allow-pickle", is_flag=True, help=ALLOW_PICKLE_HELP)
    def eval_command(model, task_names, split, num_samples, batch_size, max_length, device, seed,
                     heads, quiet, allow_pickle) -> None:
        """Score a model folder per task; writes results.json beside it, prints it on stdout."""
        from prefkit.commands.evaluation import evaluate_and_report
        from prefkit.eval.evaluate import EvalSettings
        from prefkit.io.checkpoint import Checkpoint

        if Path(model).is_dir():  # damaged weights, or pickle ones not allowed: one error line
            Checkpoint.open(Path(model), allow_pickle=allow_pickle)

        names = [t.strip() for t in task_names.split(",") if t.strip()] if task_names else None
        settings = EvalSettings(split, num_samples, batch_size, max_length, device, seed)
        results = evaluate_and_report(Path(model), names, registry(), settings, heads=heads,
                                      quiet=quiet)
        click.echo(json.dumps(results, indent=2))

    return cli


class _PrefkitGroup(click.Group):
    """Turns a PrefkitError from any command into one line on stderr and its exit code
    (the full traceback with --traceback or PREFKIT_DEBUG=1). Other exceptions are bugs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrefkitError as exc:
            if ctx.params.get("traceback") or os.environ.get("PREFKIT_DEBUG") == "1":
                raise
            _report(exc)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:  # the merge in progress has already removed its partial output
            if ctx.params.get("traceback") or os.environ.get("PREFKIT_DEBUG") == "1":
                raise
            _echo_err("Error: interrupted; nothing half-written was left behind")
            ctx.exit(int(ExitCode.INTERRUPTED))


def _report(exc: PrefkitError) -> None:
    if isinstance(exc, RecipeErrors):
        for error in exc.errors:
            _echo_err(f"Error: {error}")
    else:
        _echo_err(f"Error: {exc}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import atexit
    import gc
    import signal

    # Tearing down an interpreter that has imported torch collects its ~10^6 objects again and
    # again (0.4 s of every merge here); frozen, the last collections skip them. atexit runs
    # this after every handler registered later (files are closed, threads joined by then).
    atexit.register(gc.freeze)
    # Past a file size limit (ulimit -f) the kernel would kill us silently; ignored, the write
    # fails with EFBIG and the merge stops with one error and no partial output.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    build_cli()(args=argv, prog_name="prefkit")
