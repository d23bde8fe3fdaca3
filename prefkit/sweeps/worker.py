"""A sweep point merged and scored in memory, and the state a worker process keeps for it.

A point whose model is not kept (`keep_models: false`) and whose method is a tensor method is
merged by the same executor and method code as `prefkit run` (`executor.merge_in_memory`: the
tensors a shard would hold), loaded into the worker's model skeleton with `load_state_dict`, and
scored by the same `evaluate_model` the on-disk path uses; no checkpoint is written or read. The
worker's `EvalSession` keeps the tokenizer, the tokenized examples, the skeleton and the task
heads between points. Anything the in-memory path cannot mirror exactly (a solver or trainer, no
tokenizer or config to copy, names or shapes the skeleton does not have, mixed dtypes without a
config dtype) goes the on-disk way. `PREFKIT_POINTS_ON_DISK=1` sends every point that way, as
before this path existed (benchmarks/sweep_bench.py compares the two).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.eval.session import EvalSession

ON_DISK_ENV = "PREFKIT_POINTS_ON_DISK"
_KEPT: list[EvalSession] = []  # this process's session while one is kept (a stack)


def current() -> EvalSession | None:
    return _KEPT[-1] if _KEPT else None


@contextmanager
def keeping() -> Iterator[EvalSession]:
    """Keep one session for the points run in this block (an in-process sweep)."""
    session = EvalSession()
    _KEPT.append(session)
    try:
        yield session
    finally:
        _KEPT.remove(session)
        session.close()


def keep_for_process() -> EvalSession:
    """The session of a worker process, kept until it exits (pool and Ray workers)."""
    if not _KEPT:
        _KEPT.append(EvalSession())
    return _KEPT[0]


def on_disk_forced() -> bool:
    return os.environ.get(ON_DISK_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class PointScores:
    """A point's scores, in memory or on disk: per-task results and per-example arrays, whether
    a merge ran, where the time went, and what training or solving produced the model."""

    results: dict[str, Any]
    examples: dict[str, dict[str, Any]] | None
    merge_s: float
    eval_s: float
    device: str
    merged: bool = True
    learned: dict[str, Any] | None = None  # the run line's solver or training summary
    train_s: float = 0.0
    train_cached: bool = False
    train_examples: int = 0


def in_memory(loaded, registry, model_dir: Path, session: EvalSession) -> PointScores | None:
    """Merge and score the point in memory; None when it must go the on-disk way (nothing has
    been merged then)."""
    from prefkit.recipe.resolve import resolve

    if registry.get(loaded.recipe.merge_method).method.kind != "tensor":
        return None  # trainers and solvers: not planned here only to be planned again
    started = time.perf_counter()
    plan = resolve(loaded, registry, model_dir, allow_pickle=False)
    if plan.evaluate is None or plan.tokenizer_source is None or plan.out_config is None:
        return None
    dtype = _load_dtype(plan)
    if dtype is None:
        return None
    from prefkit.eval.evaluate import EvalSettings, resolve_device

    spec = plan.evaluate
    settings = EvalSettings(spec.split, spec.num_samples, spec.batch_size, spec.max_length,
                            spec.device, spec.seed)
    device = resolve_device(settings.device)
    folder = session.model_folder(plan.out_config, plan.tokenizer_source)
    tokenizer = session.tokenizer(folder)
    model = session.skeleton(folder, dtype, device)
    state = model.state_dict()
    if {tp.name: tp.shape for tp in plan.tensors} != {k: tuple(v.shape) for k, v in state.items()}:
        return None
    tensors = _merge(plan)
    merged = time.perf_counter()
    model.load_state_dict(tensors, strict=True)
    del tensors
    results, examples = _score(plan, registry, session, tokenizer, model, settings)
    return PointScores(results, examples, merged - started, time.perf_counter() - merged, device)


def _merge(plan) -> dict[str, Any]:
    """The merged tensors, through the options `prefkit run` (`runner.run_recipe`, quiet, the
    default RunOptions) gives the executor."""
    from prefkit.engine.executor import ExecuteOptions, merge_in_memory
    from prefkit.runner import RunOptions

    run = RunOptions(quiet=True)
    return merge_in_memory(plan, ExecuteOptions(
        force=True, max_shard_bytes=run.max_shard_bytes, allow_nonfinite=run.allow_nonfinite,
        threads=run.threads, device=run.device))


def _score(plan, registry, session: EvalSession, tokenizer, model, settings):
    """`runner.evaluate_output` on the merge held in `model`: the same heads and label orders
    (from what prefkit.json would say), the same evaluator."""
    from prefkit.eval.evaluate import evaluate_model
    from prefkit.eval.run import choose_heads, inline_tasks

    models = [m for m in (plan.base, *plan.inputs) if m is not None]
    # prefkit.json's inputs, through JSON as the on-disk path reads them
    provenance = json.loads(json.dumps({"heads": plan.heads, "inputs": [
        {"model": m.label, "task": m.task, "id2label": (m.checkpoint.config or {}).get("id2label"),
         "labels": list(m.labels) if m.labels else None} for m in models]}))
    by_task = {m.task: m for m in plan.inputs if m.task is not None}
    heads = choose_heads(str(plan.output), provenance, json.loads(json.dumps(plan.out_config)),
                         plan.evaluate.tasks, registry, inline_tasks(plan.inline_tasks),
                         plan.heads, lambda task: session.task_head(
                             by_task[task].checkpoint, tuple(plan.head_tensors)))
    return evaluate_model(tokenizer, model, heads, settings,
                          data=lambda task: session.data(tokenizer, task, settings))


def _load_dtype(plan) -> str | None:
    """The dtype `from_pretrained` would load the written output in: the config's `dtype`
    (`torch_dtype` in older configs), else that of its floating tensors (None: mixed)."""
    from prefkit.io.dtypes import FLOAT_DTYPES

    given = plan.out_config.get("dtype") or plan.out_config.get("torch_dtype")
    if given:
        return str(given).removeprefix("torch.")
    found = {tp.out_dtype for tp in plan.tensors if tp.out_dtype in FLOAT_DTYPES}
    return found.pop() if len(found) == 1 else None
