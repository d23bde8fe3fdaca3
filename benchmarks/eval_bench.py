"""Evaluation benchmark: examples/s of prefkit's evaluator against a plain transformers loop over
the same examples and the same loaded model, measured in the same run.

This is a benchmark, not a test: it is not collected by pytest and asserts nothing.

Run it from the repository root with the dev venv::

    .venv/bin/python benchmarks/eval_bench.py                 # the demo zoo (make demo-sweep)
    .venv/bin/python benchmarks/eval_bench.py --tiny          # a tiny seeded model it makes itself
    .venv/bin/python benchmarks/eval_bench.py --num-samples 500 --repeats 5 --threads 1

What it does, per task (the demo zoo's tweet_sentiment, wordnet_topic, wordnet_relation, each
scored with its own fine-tuned model; without the zoo, or with ``--tiny``, a seeded
BertForSequenceClassification from ``prefkit.testing.classifiers`` on 600 random sentences):

1. "plain": ``tokenizer(batch texts, padding=True, truncation=True, max_length=...)`` then
   ``model(**batch)`` under ``torch.no_grad``, batches of ``--batch-size`` in dataset order.
2. "prefkit warm": ``evaluate_model`` on the same loaded model with the task's tokenized examples
   kept (what a sweep worker does from its second point on): length-sorted batches with dynamic
   padding under ``torch.inference_mode``, plus loss and per-example arrays.
3. "prefkit folder": ``evaluate(model_dir, ...)`` (what ``prefkit eval`` does): loads tokenizer and
   model from the folder each time, token ids from the on-disk token cache.

Each is timed ``--repeats`` times after one untimed warm-up, alternating, and the fastest is
reported as examples/s, with the ratio to plain in the same run. The predictions of plain and
prefkit are compared too (padding can move a float's last bits; they should agree). The token
cache goes to a temporary PREFKIT_CACHE, never ~/.cache/prefkit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO_TASKS = ("tweet_sentiment", "wordnet_topic", "wordnet_relation")


def _tiny(root: Path, n: int):
    """A tiny seeded classifier and a csv task of `n` random sentences (2 to 40 words)."""
    import csv
    import random

    from prefkit.api import Task
    from prefkit.testing.classifiers import WORDS, make_tiny_classifier

    model = make_tiny_classifier(root / "tiny", ["a", "b", "c"], seed=0, hidden=64)
    rng = random.Random(0)
    with open(root / "tiny.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for _ in range(n):
            writer.writerow([" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40))),
                             rng.randrange(3)])
    task = Task(name="tiny", dataset="csv", text_fields=("text",), label_names=("a", "b", "c"),
                splits={"test": "test"}, data_files={"test": str(root / "tiny.csv")})
    return [(task, model)]


def _demo(zoo: Path):
    from prefkit.registry import load_registry

    registry = load_registry()
    return [(registry.task(name).task, zoo / name) for name in DEMO_TASKS]


def _plain(tokenizer, model, texts, batch_size: int, max_length: int) -> list[int]:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            columns = list(zip(*texts[start:start + batch_size]))
            batch = tokenizer(*columns, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out.extend(model(**batch).logits.argmax(dim=-1).tolist())
    return out


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_task(task, model_dir: Path, args) -> dict:
    import transformers

    from prefkit.eval.evaluate import EvalSettings, TaskHead, eval_data, evaluate, evaluate_model
    from prefkit.eval.labels import label_order

    transformers.logging.set_verbosity_error()
    settings = EvalSettings(num_samples=args.num_samples, batch_size=args.batch_size,
                            max_length=args.max_length, device="cpu")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    order = label_order(task, id2label={str(k): v for k, v in model.config.id2label.items()},
                        model_id=str(model_dir))
    heads = [TaskHead(task, order)]
    data = eval_data(tokenizer, task, settings)
    from prefkit.eval.data import examples, load_split

    texts, labels = examples(task, load_split(task, settings.split), data.indices)
    n = len(texts)

    def plain():
        return _plain(tokenizer, model, texts, args.batch_size, args.max_length)

    def warm():
        return evaluate_model(tokenizer, model, heads, settings, data=lambda t: data)

    def folder():
        return evaluate(model_dir, heads, settings)

    for fn in (plain, warm, folder):  # warm-up: imports, caches, allocator
        fn()
    best = {"plain": [], "warm": [], "folder": []}
    for _ in range(args.repeats):  # alternate, so a busy moment hits all three alike
        for name, fn in (("plain", plain), ("warm", warm), ("folder", folder)):
            best[name].append(_best(fn, 1))
    seconds = {k: min(v) for k, v in best.items()}
    predicted = [order[j] for j in plain()]
    _, per_example = warm()
    agree = sum(int(a == b) for a, b in zip(predicted, per_example[task.name]["prediction"]))
    tokens = sum(len(x) for x in data.encoded["input_ids"])
    return {"task": task.name, "n": n, "tokens": tokens, "agree": agree, **seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "recipes" / "demo" / "zoo")
    parser.add_argument("--tiny", action="store_true", help="the tiny seeded model, not the zoo")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="prefkit-eval-bench-") as tmp:
        os.environ["PREFKIT_CACHE"] = str(Path(tmp) / "cache")
        zoo_ok = all((args.zoo / t / "config.json").is_file() for t in DEMO_TASKS)
        if args.tiny or not zoo_ok:
            if not args.tiny:
                print(f"no demo zoo at {args.zoo} (make demo-sweep): the tiny seeded model")
            pairs = _tiny(Path(tmp), max(args.num_samples, 600))
        else:
            pairs = _demo(args.zoo)
        rows = [bench_task(task, model, args) for task, model in pairs]
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, max_length "
          f"{args.max_length}, best of {args.repeats}; examples/s (ratio to plain)")
    print(f"{'task':<18} {'n':>5} {'tokens':>7} {'plain':>8} {'prefkit warm':>18} "
          f"{'prefkit folder':>18} {'agree':>7}")
    total = {"n": 0, "plain": 0.0, "warm": 0.0, "folder": 0.0}
    for r in rows:
        rate = {k: r["n"] / r[k] for k in ("plain", "warm", "folder")}
        print(f"{r['task']:<18} {r['n']:>5} {r['tokens']:>7} {rate['plain']:>8.0f} "
              f"{rate['warm']:>10.0f} ({rate['warm'] / rate['plain']:4.2f}x) "
              f"{rate['folder']:>10.0f} ({rate['folder'] / rate['plain']:4.2f}x) "
              f"{r['agree']:>4}/{r['n']}")
        for k in ("plain", "warm", "folder"):
            total[k] += r[k]
        total["n"] += r["n"]
    if len(rows) > 1:
        rate = {k: total["n"] / total[k] for k in ("plain", "warm", "folder")}
        print(f"{'all':<18} {total['n']:>5} {'':>7} {rate['plain']:>8.0f} {rate['warm']:>10.0f} "
              f"({rate['warm'] / rate['plain']:4.2f}x) {rate['folder']:>10.0f} "
              f"({rate['folder'] / rate['plain']:4.2f}x)")
    ratio = total["plain"] / total["warm"]
    print(f"target: prefkit warm >= 2x plain: {'met' if ratio >= 2 else 'not met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
