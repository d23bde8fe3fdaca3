"""Training benchmark: seconds per optimiser step of the trainer methods on the demo model, as
ratios to a plain single-task fine-tuning step measured in the same run.

This is a benchmark, not a test: it is not collected by pytest and asserts nothing.

    make demo-data && .venv/bin/python -m prefkit.demo.zoo recipes/demo/zoo   # the demo zoo, once
    .venv/bin/python benchmarks/train_bench.py                 # 12 timed steps each, 3 warm-up
    .venv/bin/python benchmarks/train_bench.py --steps 30 --batch-size 16 --threads 2

Each method trains the demo recipe's model (all-MiniLM-L6-v2, top 3 of 6 layers, per-task heads,
batch 32 per task, max length 48) through the shared loop (`prefkit.train`), with a throwaway cache
folder. A step of a 3-task method processes 3 batches (one per task); the reference is a step of
the same loop on tweet_sentiment alone (one batch, α = 1): a plain single-task fine-tuning step.
The ratio is per step, so ≈ m = 3 means "no overhead beyond the extra batches". EPO adds m separate
backward passes instead of one, the Gram matrix of the task gradients and two small LPs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "recipes" / "demo" / "zoo"
TASKS = ("tweet_sentiment", "wordnet_topic", "wordnet_relation")


def _recipe(folder: Path, method: str, tasks, args) -> Path:
    models = "\n".join(f"  - {{model: {ZOO / t}, task: {t}}}" for t in tasks)
    path = folder / f"{method}_{len(tasks)}.yaml"
    path.write_text(f"""merge_method: {method}
base_model: {ZOO / 'base'}
models:
{models}
preference: {[0.5, 0.3, 0.2][:len(tasks)] if len(tasks) > 1 else [1.0]}
heads: per_task
train: {{steps: {args.steps + args.warmup}, batch_size: {args.batch_size}, lr: 2.0e-4, max_length: 48,
         train_layers: 3, seed: 0, threads: {args.threads}, device: cpu,
         cache_dir: {folder / 'cache'}, checkpoint_every: 100000, log_every: 100000}}
""")
    return path


def _time(method: str, tasks, folder: Path, args) -> list[float]:
    from prefkit.progress import NullReporter
    from prefkit.recipe import load_recipe
    from prefkit.recipe.resolve import resolve
    from prefkit.registry import load_registry
    from prefkit.train import train_plan

    registry = load_registry()
    plan = resolve(load_recipe(_recipe(folder, method, tasks, args)), registry)
    stamps: list[float] = []
    train_plan(plan, registry, reporter=NullReporter(),
               on_step=lambda step, row: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[args.warmup - 1:], stamps[args.warmup:])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not (ZOO / "base" / "model.safetensors").is_file():
        print(f"no demo zoo at {ZOO}: run `make demo` (or python -m prefkit.demo.zoo {ZOO})",
              file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefkit-train-bench-") as tmp:
        folder = Path(tmp)
        single = statistics.median(_time("linear_scalarization", TASKS[:1], folder, args))
        rows.append(("single-task step (tweet_sentiment)", single))
        for method in ("linear_scalarization", "chebyshev", "epo"):
            rows.append((f"{method} (3 tasks)", statistics.median(_time(method, TASKS, folder, args))))
    print(f"seconds per step: median of {args.steps} steps after {args.warmup} warm-up; "
          f"batch {args.batch_size} per task, {args.threads} thread(s)")
    print(f"{'method':<38} {'s/step':>8} {'ratio':>7}")
    for name, seconds in rows:
        print(f"{name:<38} {seconds:>8.3f} {seconds / single:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
