"""The commands that read merge and sweep outputs (CLI only): `report` and `eval`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from prefkit.commands.clikit import ALLOW_PICKLE_HELP, CliState


def add_report(cli: click.Group, state: CliState) -> None:
    @cli.command()
    @click.argument("folder", type=click.Path(file_okay=False))
    @click.option("--metric", default="accuracy", show_default=True, help="The score of each task.")
    @click.option("--reference", help="Hypervolume reference: one value, or one per task "
                  "(comma-separated); default 0.")
    @click.option("--no-plots", is_flag=True, help="Write report.md only.")
    @click.option("--html", "as_html", is_flag=True,
                  help="Also write report.html: one self-contained page (figures embedded).")
    @click.option("-q", "--quiet", is_flag=True, help="No table on stderr.")
    def report(folder, metric, reference, no_plots, as_html, quiet) -> None:
        """Rebuild a sweep's report.md and plots from its results.jsonl; JSON on stdout."""
        from prefkit.commands.report import parse_reference, report_command

        result = report_command(folder, metric=metric, reference=parse_reference(reference),
                                plots=not no_plots, quiet=quiet)
        if as_html:
            from prefkit.sweeps.html import write_html

            result["html"] = str(write_html(Path(folder)))
            if not quiet:
                click.echo(f"wrote {result['html']}", err=True)
        click.echo(json.dumps(result, indent=2))


def add_eval(cli: click.Group, state: CliState) -> None:
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
        results = evaluate_and_report(Path(model), names, state.registry(), settings, heads=heads,
                                      quiet=quiet)
        click.echo(json.dumps(results, indent=2))
