"""Fine-tuning one demo task: seeded data order, a classifier on the base, AdamW, one folder.

Every random draw comes from the task's seed (`task_seed`), in a fixed order: the training data's
order (a `torch.Generator`), then the classifier head's initialisation (`torch.manual_seed(seed)`),
then dropout (`torch.manual_seed(seed + 1)`). The caller turns on deterministic algorithms and
fixes the thread count (see `prefkit.demo.zoo`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.api import Task
from prefkit.demo.base import quiet_transformers
from prefkit.demo.folders import publish, tmp_dir, write_zoo_info
from prefkit.demo.progress import Progress
from prefkit.demo.settings import ZooSettings, task_seed
from prefkit.errors import DataError, PrefkitError
from prefkit.eval.data import load_split
from prefkit.train.model import trainable

# ------------------------------------------------------------------------------------- the data


def _rows(task: Task, dataset, indices: Sequence[int]) -> tuple[list[list[str]], list[int]]:
    """Text columns (one list per text field) and labels of the given rows, in that order."""
    unique = sorted(set(indices))
    sub = dataset.select(unique)
    pos = {i: k for k, i in enumerate(unique)}
    columns = [list(sub[f]) for f in task.text_fields]
    labels = [int(x) for x in sub[task.label_field]]
    bad = [x for x in labels if not 0 <= x < task.num_labels]
    if bad:
        raise DataError(f"task {task.name!r}: label {bad[0]} is not an index into "
                        f"{list(task.label_names)}")
    return ([[col[pos[i]] for i in indices] for col in columns], [labels[pos[i]] for i in indices])


def _encode(tokenizer, columns: list[list[str]], max_length: int) -> list[dict[str, list[int]]]:
    enc = tokenizer(*columns, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(enc["input_ids"]))]


def _collate(tokenizer, features: list[dict[str, list[int]]]):
    return tokenizer.pad(features, padding=True, return_tensors="pt")


def _length_batches(n: int, lengths: Sequence[int], batch_size: int, gen) -> list[list[int]]:
    """Positions 0..n-1 (already in random order) cut into batches of similar length: each run of
    8 batches is sorted by length, cut, and its batches shuffled. Less padding, same data."""
    import torch

    batches: list[list[int]] = []
    chunk = batch_size * 8
    for start in range(0, n, chunk):
        part = sorted(range(start, min(n, start + chunk)), key=lambda i: lengths[i])
        cut = [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        batches.extend(cut[k] for k in torch.randperm(len(cut), generator=gen).tolist())
    return batches


@dataclass
class _TaskData:
    """A task's encoded training draws (in batches) and validation examples."""

    encoded: list[dict[str, list[int]]]  # the training draws, in draw order
    labels: list[int]
    batches: list[list[int]]  # positions into `encoded`, one list per step
    val_encoded: list[dict[str, list[int]]]
    val_labels: list[int]
    n_val: int  # validation examples scored
    n_tr: int  # training draws scored (the first ones)
    total: int  # training draws: steps × batch size
    majority: float  # the validation accuracy of the most frequent label


def _prepare_data(task: Task, tokenizer, settings: ZooSettings, gen) -> _TaskData:
    """Draw `steps × batch_size` training examples (whole shuffled passes), batch them by length,
    and encode the first `eval_examples` validation examples."""
    import torch

    train = load_split(task, "train")
    validation = load_split(task, "validation")
    if len(train) == 0 or len(validation) == 0:
        raise DataError(f"task {task.name!r}: empty train or validation split")

    total = settings.steps * settings.batch_size
    draws: list[int] = []
    while len(draws) < total:  # whole shuffled passes over the train split
        draws.extend(torch.randperm(len(train), generator=gen).tolist())
    draws = draws[:total]
    columns, labels = _rows(task, train, draws)
    encoded = _encode(tokenizer, columns, settings.max_length)
    batches = _length_batches(total, [len(e["input_ids"]) for e in encoded],
                              settings.batch_size, gen)

    n_val = min(settings.eval_examples, len(validation))
    val_columns, val_labels = _rows(task, validation, range(n_val))
    val_encoded = _encode(tokenizer, val_columns, settings.max_length)
    n_tr = min(settings.eval_examples, total)
    majority = Counter(val_labels).most_common(1)[0][1] / n_val
    return _TaskData(encoded, labels, batches, val_encoded, val_labels, n_val, n_tr, total,
                     majority)


# ------------------------------------------------------------------------------------ the model


def _classifier(transformers, task: Task, base: Path, settings: ZooSettings, seed: int):
    """The base with a seeded classifier head; only the top `train_layers` layers (plus pooler
    and head) trainable. Returns (model, layer count, trained layer count)."""
    import torch

    torch.manual_seed(seed)  # the classifier head's initialisation
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=task.num_labels,
        id2label=dict(enumerate(task.label_names)),
        label2id={name: i for i, name in enumerate(task.label_names)})
    layers = model.config.num_hidden_layers
    trained_layers = layers if settings.train_layers is None else min(settings.train_layers, layers)
    for name, param in model.named_parameters():
        param.requires_grad = trainable(name, layers, trained_layers)
    return model, layers, trained_layers


def _optimizer(model, settings: ZooSettings):
    """AdamW (no weight decay on biases and norms) with a linear warm-up over the first tenth of
    the steps, then linear decay to 0. Returns (optimizer, scheduler)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings.learning_rate)
    warmup = max(1, settings.steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _fit(task: Task, model, tokenizer, data: _TaskData, settings: ZooSettings, seed: int,
         progress: Progress) -> list[float]:
    """Train on `data.batches` (dropout seeded with `seed + 1`); returns the loss of each step."""
    import torch

    optimizer, scheduler = _optimizer(model, settings)
    label_tensor = torch.tensor(data.labels)

    progress.start(f"{task.name}", settings.steps)
    torch.manual_seed(seed + 1)  # dropout
    model.train()
    losses = []
    for batch_positions in data.batches:
        batch = _collate(tokenizer, [data.encoded[i] for i in batch_positions])
        loss = model(**batch, labels=label_tensor[batch_positions]).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if not math.isfinite(losses[-1]):
            progress.finish()
            raise PrefkitError(f"task {task.name!r}: the training loss is {losses[-1]}",
                               hint="lower the learning rate")
        progress.advance(sum(losses[-10:]) / len(losses[-10:]))
    progress.finish()
    return losses


def _accuracy(model, tokenizer, encoded, labels, batch_size: int = 64) -> float:
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    correct = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = _collate(tokenizer, [encoded[i] for i in idx])
            pred = model(**batch).logits.argmax(-1).tolist()
            correct += sum(int(p == labels[i]) for p, i in zip(pred, idx))
    return correct / max(1, len(encoded))


# ----------------------------------------------------------------------------------- one task


def train_task(task: Task, base: Path, dest: Path, settings: ZooSettings, key: dict[str, Any],
               progress: Progress) -> dict[str, Any]:
    """Fine-tune `base` on `task` and publish it as `dest` (model, tokenizer, `prefkit-demo.json`
    with `key` and the results); returns what `prefkit-demo.json` holds."""
    import torch

    transformers = quiet_transformers()
    started = time.perf_counter()
    seed = task_seed(settings.seed, task.name)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    data = _prepare_data(task, tokenizer, settings, gen)
    model, layers, trained_layers = _classifier(transformers, task, base, settings, seed)
    losses = _fit(task, model, tokenizer, data, settings, seed, progress)
    train_seconds = time.perf_counter() - started

    train_acc = _accuracy(model, tokenizer, data.encoded[:data.n_tr], data.labels[:data.n_tr])
    val_acc = _accuracy(model, tokenizer, data.val_encoded, data.val_labels)

    tmp = tmp_dir(dest.parent, dest.name)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "key": key,
        "results": {
            "train_accuracy": round(train_acc, 4),
            "validation_accuracy": round(val_acc, 4),
            "validation_majority": round(data.majority, 4),
            "validation_examples": data.n_val,
            "train_examples_seen": data.total,
            "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "train_seconds": round(train_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1),
        },
        "trained": (f"all {layers} layers, embeddings, pooler and classifier"
                    if trained_layers >= layers else
                    f"top {trained_layers} of {layers} layers, pooler and classifier"),
        "task_seed": seed,
        "source": task.source,
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "threads": torch.get_num_threads()},
    }
    write_zoo_info(tmp, info)
    publish(tmp, dest)
    r = info["results"]
    progress.note(f"{task.name}: validation accuracy {r['validation_accuracy']:.3f} "
                  f"(majority {r['validation_majority']:.3f}), train {r['train_accuracy']:.3f}, "
                  f"{r['seconds']:.0f} s")
    return info
