"""Batched evaluation of a sequence-classification model on tasks.

transformers' `AutoModelForSequenceClassification` with the model folder's tokenizer; length-sorted
batches with dynamic padding under `torch.inference_mode`; a seeded subset of the same examples
for every model; tokenization cached on disk by (tokenizer, task, split, max_length, subset).
Padded heads: the logits are sliced to the task's label count; per-task heads: the task's own
classifier is zero-padded into the model's head before its task is scored.

Each task's result has accuracy / macro_f1 (as the task lists), `loss` (mean cross-entropy over
the task's own labels, natural log), n, majority and split. `evaluate_model` scores a loaded model
(a sweep worker keeps one, see `prefkit.eval.session`) and also returns per-example arrays;
`evaluate` loads a folder, and hands those arrays to a `collect_examples()` block if one is open.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


def load_tokenizer(model_dir: Path):
    """The model folder's tokenizer (transformers' AutoTokenizer)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        return transformers.AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:
        raise DataError(f"{model_dir}: no usable tokenizer ({type(exc).__name__})",
                        hint="merge with tokenizer_source: set, or copy tokenizer files there") from exc


def _load(model_dir: Path):
    import transformers

    tokenizer = load_tokenizer(model_dir)
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    except Exception as exc:
        raise DataError(f"{model_dir}: cannot load as a sequence classifier ({exc})") from exc
    return tokenizer, model.eval()


def tokenizer_key(tokenizer) -> str:
    """A content key of the tokenizer's vocabulary (kept on the tokenizer: it is 30k entries)."""
    key = getattr(tokenizer, "_prefkit_key", None)
    if key is None:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
        key = hashlib.sha256(f"{type(tokenizer).__name__}:{vocab}".encode()).hexdigest()[:16]
        try:
            tokenizer._prefkit_key = key
        except AttributeError:  # a tokenizer that takes no new attributes: hashed each time
            pass
    return key


def tokenize(tokenizer, task: Task, split: str, texts, indices, max_length: int) -> dict[str, list]:
    """Token ids for the examples, cached on disk (PREFKIT_CACHE, default ~/.cache/prefkit)."""
    subset = hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:16]
    key = f"{tokenizer_key(tokenizer)}-{task.name}-{split}-{max_length}-{subset}"
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


@dataclass
class EvalData:
    """One task's evaluated examples: dataset indices (index order), labels, token ids, and the
    padded batches built from them (by batch size and pad id; kept with the data)."""

    indices: list[int]
    labels: list[int]
    encoded: dict[str, list] = field(repr=False)
    batches: dict[tuple[int, int], list] = field(default_factory=dict, repr=False)

    def batched(self, batch_size: int, pad_id: int) -> list:
        if (batch_size, pad_id) not in self.batches:
            self.batches[batch_size, pad_id] = list(_batches(self.encoded, batch_size, pad_id))
        return self.batches[batch_size, pad_id]


def eval_data(tokenizer, task: Task, settings: EvalSettings) -> EvalData:
    """The task's seeded subset of the split, checked and tokenized (token cache on disk)."""
    dataset = load_split(task, settings.split)
    indices = subset_indices(len(dataset), settings.num_samples, settings.seed)
    texts, labels = examples(task, dataset, indices)
    encoded = tokenize(tokenizer, task, settings.split, texts, indices, settings.max_length)
    return EvalData(indices, labels, encoded)


def _batches(encoded: dict[str, list], batch_size: int, pad_id: int) -> Iterator[tuple[list, dict]]:
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


def set_head(model, head: dict[str, Any]) -> dict[str, Any]:
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


def _score_task(model, th: TaskHead, data: EvalData, settings: EvalSettings, device: str,
                pad_id: int, reporter: Reporter) -> tuple[dict[str, Any], dict[str, Any]]:
    """One task's metrics and per-example arrays (index, correct, loss, prediction)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    task, k, n = th.task, th.task.num_labels, len(data.labels)
    output_of = {label: j for j, label in enumerate(th.order)}  # output j means label order[j]
    targets = torch.tensor([output_of[y] for y in data.labels], dtype=torch.long)
    predictions, losses = [0] * n, torch.zeros(n, dtype=torch.float32)
    previous = set_head(model, th.head) if th.head else None
    reporter.start(n, n, f"eval {task.name}")
    try:
        with torch.inference_mode():
            for rows, batch in data.batched(settings.batch_size, pad_id):
                logits = model(**{key: v.to(device) for key, v in batch.items()}).logits[:, :k]
                for row, j in zip(rows, logits.argmax(dim=-1).tolist()):
                    predictions[row] = th.order[j]
                picked = torch.tensor(rows)
                losses[picked] = F.cross_entropy(logits.float(), targets[picked].to(logits.device),
                                                 reduction="none").cpu()
                reporter.advance(task.name, len(rows))
    finally:
        reporter.finish()
        if previous:
            set_head(model, previous)
    scores = {"accuracy": METRICS["accuracy"](data.labels, predictions),
              "macro_f1": METRICS["macro_f1"](data.labels, predictions, task.num_labels)}
    result = {**{m: scores[m] for m in task.metrics if m in scores},
              "loss": float(losses.double().mean()) if n else float("nan"),
              "n": n, "majority": majority(data.labels), "split": task.splits[settings.split]}
    per_example = {"index": np.asarray(data.indices, dtype=np.int64),
                   "correct": np.asarray(predictions) == np.asarray(data.labels, dtype=np.int64),
                   "loss": losses.numpy(),
                   "prediction": np.asarray(predictions, dtype=np.int64)}
    return result, per_example


def evaluate_model(tokenizer, model, heads: list[TaskHead], settings: EvalSettings,
                   reporter: Reporter | None = None, *,
                   data: Callable[[Task], EvalData] | None = None,
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Score a loaded model (in eval mode, on `settings.device`) on each task: task name →
    metrics, and task name → per-example arrays. `data(task)` gives a task's examples (default:
    `eval_data`; a sweep worker keeps them between models)."""
    reporter = reporter or NullReporter()
    device = resolve_device(settings.device)
    width = model.config.num_labels
    results, per_example = {}, {}
    for th in heads:
        task = th.task
        if task.num_labels > width:
            raise DataError(f"task {task.name!r} has {task.num_labels} labels but the model's head "
                            f"has {width} outputs", hint="evaluate it with a model tuned for it")
        examples_ = data(task) if data is not None else eval_data(tokenizer, task, settings)
        results[task.name], per_example[task.name] = _score_task(
            model, th, examples_, settings, device, tokenizer.pad_token_id or 0, reporter)
    return results, per_example


@dataclass
class Scored:
    """What one `evaluate` call gave a `collect_examples()` block."""

    results: dict[str, dict[str, Any]]
    examples: dict[str, dict[str, Any]]
    seconds: float  # loading the model and scoring it
    device: str


_COLLECTING: ContextVar[list[Scored] | None] = ContextVar("prefkit_eval_collecting", default=None)


@contextmanager
def collect_examples() -> Iterator[list[Scored]]:
    """Within the block, every `evaluate` call appends its `Scored` to the list yielded (a sweep
    point gets the per-example arrays of the evaluation `prefkit run` does for it)."""
    scored: list[Scored] = []
    token = _COLLECTING.set(scored)
    try:
        yield scored
    finally:
        _COLLECTING.reset(token)


def evaluate(model_dir: Path, heads: list[TaskHead], settings: EvalSettings,
             reporter: Reporter | None = None) -> dict[str, dict[str, Any]]:
    """Score the model on each task; returns task name → metrics (plus loss, n, majority, split)."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    tokenizer, model = _load(Path(model_dir))
    model.to(device)
    results, per_example = evaluate_model(tokenizer, model, heads, settings, reporter)
    collecting = _COLLECTING.get()
    if collecting is not None:
        collecting.append(Scored(results, per_example, time.perf_counter() - started, device))
    return results
