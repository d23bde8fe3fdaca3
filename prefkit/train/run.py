"""Train (or reuse) the model a trainer recipe describes: the cache key, the data, the loop, and
the tensors the executor writes as the output folder."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import DataError, PrefkitError
from prefkit.eval.labels import label_order
from prefkit.eval.run import plan_tasks
from prefkit.train.state import FORMAT, RunFiles, cache_hash, load_model, save_model


@dataclass
class Trained:
    """A trained model ready for the executor."""

    files: RunFiles
    weights: dict[str, Any]  # plan tensor name → tensor (the output's own tensors)
    task_heads: dict[str, dict[str, Any]]  # per-task heads (heads: per_task)
    labels: dict[str, list[str]]  # task → label names in the trained head's output order
    summary: dict[str, Any]
    cached: bool


def _task_definition(task) -> dict[str, Any]:
    out = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
           if f.name not in ("summary", "source", "known_label_orders", "metrics")}
    loader = out.pop("loader")
    out["loader"] = None if loader is None else f"{loader.__module__}.{loader.__qualname__}"
    return out


def _orders(plan, tasks) -> list[list[int]]:
    """For each task, the task label that each output of its head means."""
    orders = []
    for model, task in zip(plan.inputs, tasks):
        head = all(by is not None for by in _head_metas(plan, model))
        if not head:  # a fresh head: outputs in the task's own label order
            orders.append(list(range(task.num_labels)))
            continue
        orders.append(label_order(task, id2label=(model.checkpoint.config or {}).get("id2label"),
                                  model_id=model.label,
                                  override=list(model.labels) if model.labels else None))
    return orders


def _head_metas(plan, model):
    i = plan.inputs.index(model)
    return [tp.sources[i] for tp in plan.tensors if tp.name in plan.head_tensors]


def resolve_device(settings) -> tuple[str, bool]:
    from prefkit.eval.evaluate import resolve_device as resolve

    device = resolve(settings.device)
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and device == "cuda")
    return device, bf16


def cache_key(plan, tasks, orders, preference, device: str, bf16: bool) -> dict[str, Any]:
    from prefkit.recipe.plan import fingerprint

    settings = plan.train
    return {
        "format": FORMAT,
        "method": plan.method.method.name,
        "settings": settings.model_dump(exclude=set(settings.NOT_IN_CACHE_KEY)),
        "preference": [round(float(p), 12) for p in preference],
        "heads": plan.heads,
        "base": fingerprint(plan.base.checkpoint) if plan.base else None,
        "tokenizer": _tokenizer_fingerprint(plan.tokenizer_source),
        "inputs": [{"task": m.task, "fingerprint": fingerprint(m.checkpoint), "order": order}
                   for m, order in zip(plan.inputs, orders)],
        "tasks": [_task_definition(t) for t in tasks],
        "device": device,
        "bf16": bf16,
    }


def _tokenizer_fingerprint(folder: Path | None) -> str | None:
    import hashlib

    from prefkit.io.hub import TOKENIZER_FILES

    if folder is None:
        return None
    h = hashlib.sha256()
    for pattern in TOKENIZER_FILES:
        for file in sorted(folder.glob(pattern)):
            h.update(file.name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:16]


def train_plan(plan, registry, *, reporter, extra_tasks=None, on_step=None) -> Trained:
    """Train the plan's model, or reuse the cached one (`train.evaluate_only` requires it)."""
    import torch

    settings = plan.train
    method = plan.method.method
    tasks = plan_tasks(plan, registry, extra_tasks)
    orders = _orders(plan, tasks)
    preference = list(plan.task_preference)
    device, bf16 = resolve_device(settings)
    key = cache_key(plan, tasks, orders, preference, device, bf16)
    files = RunFiles(Path(settings.cache_dir), f"{method.name}_{cache_hash(key)}")
    labels = {t.name: [t.label_names[j] for j in order] for t, order in zip(tasks, orders)}
    per_task = plan.heads == "per_task"
    if files.model.is_file():
        reporter.note(f"{method.name}: cached model {files.model}")
        tensors, summary = load_model(files)
        return _trained(plan, files, tensors, tasks, labels, summary, per_task, cached=True)
    if settings.evaluate_only:
        raise PrefkitError(f"train.evaluate_only: no trained model {files.model} for this recipe",
                           hint="train it first (run without evaluate_only); the file name is the "
                           "hash of everything that decides the weights")

    from prefkit.train.loop import train
    from prefkit.train.model import MultiTaskModel

    started = time.perf_counter()
    tokenizer, data = _training_data(plan, tasks, orders, settings.max_length)
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if device == "cpu":
            torch.use_deterministic_algorithms(True)
        model = MultiTaskModel(plan, tasks, per_task=per_task, seed=settings.seed,
                               train_layers=settings.train_layers).to(device)
        for name in model.fresh:
            reporter.note(f"{method.name}: task {name!r} starts from a fresh head "
                          "(its model has no classifier)")
        evaluate = None
        if settings.eval_every:
            evaluate = _validation(tasks, orders, tokenizer, settings, model, device, bf16)
        result = train(model, data, method, settings, preference, files=files, device=device,
                       bf16=bf16, pad_id=tokenizer.pad_token_id or 0, reporter=reporter,
                       evaluate=evaluate, on_step=on_step)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det)
    summary = {"steps": result.steps, "seconds": round(time.perf_counter() - started, 3),
               "resumed_from": result.resumed_from, "device": device, "bf16": bf16,
               "final_losses": result.log[-1]["losses"] if result.log else None,
               "final_alpha": result.log[-1]["alpha"] if result.log else None,
               "preference": preference, "tasks": [t.name for t in tasks]}
    save_model(files, result.state, key, summary, result.log)
    return _trained(plan, files, result.state, tasks, labels, summary, per_task, cached=False)


def _training_data(plan, tasks, orders, max_length: int):
    """The base's tokenizer and every task's tokenized train split (each must have examples)."""
    from prefkit.train.data import prepare

    tokenizer = _quiet_transformers().AutoTokenizer.from_pretrained(plan.tokenizer_source)
    data = [prepare(t, tokenizer, order, "train", max_length) for t, order in zip(tasks, orders)]
    empty = [d.task.name for d in data if len(d) == 0]
    if empty:
        raise DataError(f"task {empty[0]!r}: the train split is empty")
    return tokenizer, data


def _trained(plan, files, tensors, tasks, labels, summary, per_task, cached) -> Trained:
    """The output's tensors: the body as trained; heads padded (per_task: each task's own head
    goes to heads/<task>.safetensors and the model's head is their zero-padded mean)."""
    import torch

    heads = {t.name: {n: tensors[f"heads.{t.name}.{n}"] for n in plan.head_tensors}
             for t in tasks} if per_task else {}
    weights = {}
    for tp in plan.tensors:
        if tp.copy:
            continue
        if tp.name in tensors:
            weights[tp.name] = tensors[tp.name]
        elif per_task and tp.name in plan.head_tensors:
            padded = torch.zeros(tp.shape, dtype=torch.float32)
            for head in heads.values():
                t = head[tp.name]
                padded[tuple(slice(0, d) for d in t.shape)] += t.float() / len(heads)
            weights[tp.name] = padded
        else:
            raise PrefkitError(f"{files.model}: has no tensor {tp.name!r}",
                               hint="delete the file to retrain")
    return Trained(files, weights, heads, labels, summary, cached)


def _validation(tasks, orders, tokenizer, settings, model, device, bf16):
    """Per-task validation loss and accuracy on the first `eval_samples` examples."""
    import torch
    import torch.nn.functional as F

    from prefkit.train.data import collate, prepare

    sets = []
    for i, (task, order) in enumerate(zip(tasks, orders)):
        if "validation" in task.splits:
            sets.append((i, prepare(task, tokenizer, order, "validation", settings.max_length,
                                    settings.eval_samples)))
    pad = tokenizer.pad_token_id or 0

    def evaluate(step: int) -> dict[str, dict[str, float]]:
        out = {}
        with torch.inference_mode():
            for i, data in sets:
                loss = correct = 0.0
                for start in range(0, len(data), 64):
                    rows = list(range(start, min(len(data), start + 64)))
                    batch, targets = collate(data, rows, pad)
                    batch = {k: v.to(device) for k, v in batch.items()}
                    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                        logits = model.logits(i, batch).float()
                    targets = targets.to(device)
                    loss += float(F.cross_entropy(logits, targets, reduction="sum"))
                    correct += float((logits.argmax(-1) == targets).sum())
                out[data.task.name] = {"loss": round(loss / len(data), 6),
                                       "accuracy": round(correct / len(data), 6)}
        return out

    return evaluate


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return transformers
