"""Batched evaluation of a sequence-classification model on tasks.

transformers' `AutoModelForSequenceClassification` with the model folder's tokenizer; length-sorted
batches with dynamic padding under `torch.inference_mode`; a seeded subset of the same examples
for every model; tokenization cached on disk by (tokenizer, task, split, max_length, subset).
Padded heads: the logits are sliced to the task's label count; per-task heads: the task's own
classifier is zero-padded into the model's head before its task is scored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.api import Task
from prefkit.errors import DataError
from prefkit.eval.data import examples, load_split, subset_indices
from prefkit.eval.metrics import METRICS, majority
from prefkit.progress import NullReporter, Reporter


@dataclass
class TaskHead:
    """One task to score: output j of the model means task label `order[j]`; `head` holds the
    task's own classifier tensors (per-task heads) or None (the model's head, sliced)."""

    task: Task
    order: list[int]
    head: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    num_samples: int | None = None
    batch_size: int = 32
    max_length: int = 128
    device: str = "auto"
    seed: int = 0


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("device cuda requested but torch sees no CUDA device", hint="use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DataError("device mps requested but it is not available", hint="use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise DataError(f"unknown device {name!r}", hint="use auto, cpu, cuda or mps")
    return name


def cache_dir() -> Path:
    return Path(os.environ.get("PREFKIT_CACHE", Path.home() / ".cache" / "prefkit"))


def _load(model_dir: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:
        raise DataError(f"{model_dir}: no usable tokenizer ({type(exc).__name__})",
                        hint="merge with tokenizer_source: set, or copy tokenizer files there") from exc
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    except Exception as exc:
        raise DataError(f"{model_dir}: cannot load as a sequence classifier ({exc})") from exc
    return tokenizer, model.eval()


def _tokenizer_key(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return hashlib.sha256(f"{type(tokenizer).__name__}:{vocab}".encode()).hexdigest()[:16]


def tokenize(tokenizer, task: Task, split: str, texts, indices, max_length: int) -> dict[str, list]:
    """Token ids for the examples, cached on disk (PREFKIT_CACHE, default ~/.cache/prefkit)."""
    subset = hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:16]
    key = f"{_tokenizer_key(tokenizer)}-{task.name}-{split}-{max_length}-{subset}"
    path = cache_dir() / "tokens" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    columns = list(zip(*texts))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    data = {k: [list(v) for v in values] for k, values in encoded.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return data


def _batches(encoded: dict[str, list], batch_size: int, pad_id: int):
    """Length-sorted batches (longest first), each padded to its own longest sequence."""
    import torch

    ids = encoded["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        width = max(len(ids[i]) for i in rows)
        batch = {}
        for key, values in encoded.items():
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([values[i] + [fill] * (width - len(values[i])) for i in rows])
        yield rows, batch


def _set_head(model, head: dict[str, Any]) -> dict[str, Any]:
    """Zero-pad the task's head tensors into the model's; returns the previous values."""
    import torch

    state = model.state_dict()
    previous = {}
    with torch.no_grad():
        for name, tensor in head.items():
            if name not in state:
                raise DataError(f"per-task head tensor {name!r} is not in the merged model")
            target = state[name]
            previous[name] = target.clone()
            target.zero_()
            target[tuple(slice(0, d) for d in tensor.shape)] = tensor.to(target.dtype)
    return previous


def evaluate(model_dir: Path, heads: list[TaskHead], settings: EvalSettings,
             reporter: Reporter | None = None) -> dict[str, dict[str, Any]]:
    """Score the model on each task; returns task name → metrics (plus n, majority, split)."""
    import torch

    reporter = reporter or NullReporter()
    device = resolve_device(settings.device)
    tokenizer, model = _load(Path(model_dir))
    model.to(device)
    width = model.config.num_labels
    results = {}
    for th in heads:
        task = th.task
        if task.num_labels > width:
            raise DataError(f"task {task.name!r} has {task.num_labels} labels but the model's head "
                            f"has {width} outputs", hint="evaluate it with a model tuned for it")
        dataset = load_split(task, settings.split)
        indices = subset_indices(len(dataset), settings.num_samples, settings.seed)
        texts, labels = examples(task, dataset, indices)
        encoded = tokenize(tokenizer, task, settings.split, texts, indices, settings.max_length)
        previous = _set_head(model, th.head) if th.head else None
        predictions = [0] * len(labels)
        reporter.start(len(labels), len(labels), f"eval {task.name}")
        with torch.inference_mode():
            for rows, batch in _batches(encoded, settings.batch_size, tokenizer.pad_token_id or 0):
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
                best = logits[:, : task.num_labels].argmax(dim=-1).tolist()
                for row, j in zip(rows, best):
                    predictions[row] = th.order[j]
                reporter.advance(task.name, len(rows))
        reporter.finish()
        if previous:
            _set_head(model, previous)
        scores = {"accuracy": METRICS["accuracy"](labels, predictions),
                  "macro_f1": METRICS["macro_f1"](labels, predictions, task.num_labels)}
        results[task.name] = {**{m: scores[m] for m in task.metrics if m in scores},
                              "n": len(labels), "majority": majority(labels),
                              "split": task.splits[settings.split]}
    return results
