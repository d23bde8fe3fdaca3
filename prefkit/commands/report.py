"""`prefkit report DIR`: rebuild a sweep's report.md and plots from its results.jsonl alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def parse_reference(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: give numbers separated by commas, e.g. 0.5,0.5") from exc


def methods_text(rows: list[dict[str, Any]]) -> str:
    """A plain per-method table for stderr."""
    tasks = list(rows[0]["best"]) if rows else []
    width = max([len(r["method"]) for r in rows] + [6])
    head = f"{'method':<{width}} {'points':>6} {'hypervol':>9} {'mean':>7} " + " ".join(
        f"{'best ' + t[:12]:>17}" for t in tasks) + f" {'align':>6}"
    lines = [head]
    for r in rows:
        align = "     –" if r["alignment"] is None else f"{r['alignment']:>6.3f}"
        lines.append(f"{r['method']:<{width}} {r['points']:>6} {r['hypervolume']:>9.4f} "
                     f"{r['mean']:>7.4f} " + " ".join(f"{r['best'][t]:>17.4f}" for t in tasks)
                     + f" {align}")
    return "\n".join(lines)


def report_command(folder: str, *, metric: str, reference: list[float] | None, plots: bool,
                   quiet: bool) -> dict[str, Any]:
    from prefkit.sweeps.report import write_report

    result = write_report(Path(folder), metric=metric, reference=reference, plots=plots)
    if not quiet:
        click.echo(methods_text(result["rows"]), err=True)
        if result["note"]:
            click.echo(result["note"], err=True)
        click.echo(f"wrote {result['report']}" + "".join(f", {p}" for p in result["plots"]), err=True)
    return {"report": result["report"], "plots": result["plots"], "methods": result["rows"]}
