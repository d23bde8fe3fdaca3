"""Sweep benchmark: seconds per point of the demo sweep (recipes/demo/sweep.yaml, 18 points,
`keep_models: false`) with points merged and scored in memory (the default) against the on-disk
path (every merge written, then loaded back by `evaluate`), measured in the same run.

This is a benchmark, not a test: it is not collected by pytest and asserts nothing.

Run it from the repository root with the dev venv, after `make demo-sweep` built the zoo::

    .venv/bin/python benchmarks/sweep_bench.py                    # 1 round: old, then new
    .venv/bin/python benchmarks/sweep_bench.py --repeats 2 --workers 1
    .venv/bin/python benchmarks/sweep_bench.py --recipe recipes/demo/sweep.yaml --keep

The old path is forced with the environment variable ``PREFKIT_POINTS_ON_DISK=1`` (see
``prefkit.sweeps.worker``); nothing else differs. Each run is a fresh ``prefkit run RECIPE -o
<fresh folder>`` subprocess with its own empty PREFKIT_CACHE (token cache), so both pay the same
start-up; runs alternate old/new. Reported: the whole command's wall seconds / points ("s/point,
sweep"), and from results.jsonl the mean of each point's own cost (wall_s, merge_s, eval_s, cpu_s).
The scores of the two paths are compared point by point (they must be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(recipe: Path, out: Path, on_disk: bool, workers: int | None) -> dict:
    env = dict(os.environ, PREFKIT_CACHE=str(out.parent / f"{out.name}-cache"))
    env.pop("PREFKIT_POINTS_ON_DISK", None)
    if on_disk:
        env["PREFKIT_POINTS_ON_DISK"] = "1"
    command = [str(ROOT / ".venv" / "bin" / "prefkit"), "run", str(recipe), "-o", str(out), "-q"]
    if workers is not None:
        command += ["--workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mean = {k: sum(r["cost"][k] for r in records) / len(records)
            for k in ("wall_s", "merge_s", "eval_s", "cpu_s")}
    return {"wall": wall, "points": len(records), "mean": mean,
            "scores": {r["key"]: r["results"] for r in records}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "demo" / "sweep.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None, help="prefkit run --workers")
    parser.add_argument("--keep", action="store_true", help="keep the output folders (printed)")
    args = parser.parse_args()
    if not (args.recipe.parent / "zoo" / "base").is_dir():
        sys.exit(f"no zoo next to {args.recipe}: run make demo-sweep first")
    tmp = Path(tempfile.mkdtemp(prefix="prefkit-sweep-bench-"))
    runs: dict[str, list[dict]] = {"old (on disk)": [], "new (in memory)": []}
    try:
        for i in range(args.repeats):
            for name, on_disk in (("old (on disk)", True), ("new (in memory)", False)):
                out = tmp / f"{'old' if on_disk else 'new'}{i}"
                runs[name].append(run_once(args.recipe, out, on_disk, args.workers))
                r = runs[name][-1]
                print(f"round {i + 1} {name:<16} {r['wall']:6.1f} s for {r['points']} points",
                      flush=True)
    finally:
        if args.keep:
            print(f"outputs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'path':<16} {'s/point, sweep':>15} {'point wall_s':>13} {'merge_s':>8} "
          f"{'eval_s':>7} {'cpu_s':>6}   (best round by sweep wall)")
    best = {}
    for name, rs in runs.items():
        r = best[name] = min(rs, key=lambda x: x["wall"])
        m = r["mean"]
        print(f"{name:<16} {r['wall'] / r['points']:>15.2f} {m['wall_s']:>13.2f} "
              f"{m['merge_s']:>8.2f} {m['eval_s']:>7.2f} {m['cpu_s']:>6.2f}")
    old, new = best["old (on disk)"], best["new (in memory)"]
    same = old["scores"] == new["scores"]
    print(f"old/new, s/point: {old['wall'] / new['wall']:.2f}x; scores equal point by point: {same}")
    per_point = new["wall"] / new["points"]
    print(f"target: <= 2 s a point: {'met' if per_point <= 2 else 'not met'} ({per_point:.2f} s)")


if __name__ == "__main__":
    main()
