"""`prefkit plan`: what a recipe will do, tensor by tensor (stdout)."""

from __future__ import annotations

import json

import click

from prefkit.recipe.plan import Plan


def plan_to_dict(plan: Plan) -> dict:
    def params(p):
        return p.model_dump(by_alias=True) if p is not None else None

    return {
        "recipe": str(plan.source.path),
        "method": plan.method.method.name,
        "plugin": plan.method.plugin,
        "output": str(plan.output),
        "base": str(plan.base.path) if plan.base else None,
        "models": [{"model": m.label, "path": str(m.path), "task": m.task} for m in plan.inputs],
        "preference": list(plan.preference.given) if plan.preference else None,
        "total_bytes": sum(_nbytes(t) for t in plan.tensors),
        "notes": list(plan.notes),
        "tensors": [{
            "name": t.name, "shape": list(t.shape), "compute_dtype": t.compute_dtype,
            "out_dtype": t.out_dtype, "bytes": _nbytes(t), "layer": t.info.layer,
            "t": round(t.info.t, 6), "copy": t.copy,
            "sources": [str(m.file) if m else None for m in t.sources],
            "base": str(t.base.file) if t.base else None,
            "params": params(t.params), "model_params": [params(p) for p in t.model_params],
        } for t in plan.tensors],
    }


def _nbytes(t) -> int:
    from prefkit.io.writer import OutTensor

    return OutTensor(t.name, t.out_dtype, t.shape).nbytes


def print_plan(plan: Plan, as_json: bool) -> None:
    data = plan_to_dict(plan)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    console.print(f"[bold]{data['method']}[/bold] (plugin {data['plugin']}) → {data['output']}")
    for m in data["models"]:
        console.print(f"  model {m['model']}" + (f" (task {m['task']})" if m["task"] else ""))
    if data["preference"]:
        console.print(f"  preference {data['preference']}")
    table = Table("tensor", "shape", "dtype", "files", "bytes", "parameters")
    for t in data["tensors"]:
        files = ", ".join(sorted({s.rsplit("/", 1)[-1] for s in t["sources"] if s}))
        shared = " ".join(f"{k}={v}" for k, v in (t["params"] or {}).items())
        per = "; ".join(" ".join(f"{k}={_short(v)}" for k, v in mp.items())
                        for mp in t["model_params"])
        table.add_row(t["name"], str(t["shape"]), f"{t['compute_dtype']}→{t['out_dtype']}", files,
                      str(t["bytes"]), "copy" if t["copy"] else f"{shared} | {per}")
    console.print(table)
    console.print(f"{len(data['tensors'])} tensors, {data['total_bytes']} bytes")
    for note in data["notes"]:
        console.print(f"note: {note}")


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value
