"""Merge benchmark: prefkit's wall time and peak memory on roberta-sized checkpoints, against the
time it takes just to read the inputs (the "floor"), and optionally against mergekit 0.1.5.

This is a benchmark, not a test: it is not collected by pytest and asserts nothing.

Run it from the repository root with the dev venv::

    .venv/bin/python benchmarks/merge_bench.py                    # base size, 4 models, 3 repeats
    .venv/bin/python benchmarks/merge_bench.py --vs-mergekit      # + mergekit-yaml on the same recipes
    .venv/bin/python benchmarks/merge_bench.py --vs-mergekit --mergekit-repeats 1
    .venv/bin/python benchmarks/merge_bench.py --size large       # ~355M params (1.4 GB per model)
    .venv/bin/python benchmarks/merge_bench.py --size base,large  # + memory as models grow
    .venv/bin/python benchmarks/merge_bench.py --models 8         # 8 fine-tuned models
    .venv/bin/python benchmarks/merge_bench.py --models 2,4,8     # + a scaling table over N
    .venv/bin/python benchmarks/merge_bench.py --methods ties --repeats 1 --profile ties
    .venv/bin/python benchmarks/merge_bench.py --snapshot          # prefkit as committed at HEAD
    .venv/bin/python benchmarks/merge_bench.py --json results.json

What it does:

1. Builds (once, cached under ``benchmarks/.cache/``, which git ignores) a seeded, deterministic set
   of RoBERTa-shaped fp32 checkpoints: a base (vocab 50265, 514 positions, hidden 768, 12 layers,
   intermediate 3072; ~125M parameters; ``--size large``: hidden 1024, 24 layers, intermediate
   4096, ~355M) without a classifier, like ``roberta-base``, and N fine-tuned models = base + seeded
   noise, each with its own classifier head of 4, 2, 3, 2 labels (AG News, IMDB, MNLI, MRPC; the
   cycle repeats for N > 4). Each model is sharded safetensors (backbone in two shards, the head in
   a third) with ``model.safetensors.index.json`` and a RoBERTa ``config.json``. Tensors are
   generated and written one at a time (peak memory: one tensor), so building is cheap in memory.
   Disk: ~0.5 GB per model at base size, ~1.4 GB at large (large with 8 models needs ~13 GB).
2. Measures the floor: reading every input byte once, sequentially, with 16 MiB buffered reads,
   after one warm-up read; sampled ``--repeats`` times at the start and once more per round, and
   the fastest sample is reported. The page cache is not dropped, so the floor is a *warm-cache*
   floor, and so are the merges: each measured run is preceded by an untimed read of its inputs.
3. Runs ``prefkit run`` (a fresh ``python`` subprocess per run) for linear, task_arithmetic, ties
   (density 0.2, per-tensor trimming) and ties with ``trim: global``, ``--repeats`` times each, and
   reports medians. Wall time is the whole process (interpreter start, imports, planning, merge,
   writing); "merge s" is prefkit's own ``seconds`` (the executor only); the "startup" line is a
   child that only imports what ``prefkit run`` imports. "user s"/"sys s" are the child's CPU
   times and "faults M" its minor page faults in millions (each is a fresh 4 KiB page touched:
   a rough measure of how many bytes of new temporaries the run allocates). Peak RSS is the
   command's own ``ru_maxrss`` from ``os.wait4`` in a small launcher process (exact; a command
   started straight from this script would inherit this script's own peak as its floor; it
   counts resident pages of memory-mapped input files too, where a reader maps them); "peak
   anon" is the highest ``RssAnon`` seen by polling ``/proc/PID/status`` every 20 ms (heap and
   tensors only; sampled, so it can miss short spikes).
4. ``--vs-mergekit`` installs mergekit==0.1.5 into a throwaway venv outside the repository
   (``--mergekit-venv``, default ``/tmp/prefkit-mergekit-venv``; torch==2.13.0, the CPU wheel,
   is installed first and pinned through a constraints file) and runs ``mergekit-yaml`` and prefkit
   alternately on the same inputs. mergekit cannot merge tensors that the base lacks or whose
   shapes differ, so this comparison uses a second set ("eqhead"): the same backbone shards
   (hard links, no extra disk) with a classifier on the base too and every head of one size.
   Recipes are equivalent: prefkit's ``preference`` becomes mergekit's explicit weights, both merge
   in float32. ties with ``trim: global`` has no mergekit counterpart (shown as n/a). After the
   timed rounds the last two outputs of each method are compared tensor by tensor (max |diff| and
   the number of differing elements; for ties these are tie-breaks among equal magnitudes at the
   top-k cut-off, where prefkit keeps the lowest flat indices and mergekit's unstable argsort
   keeps whichever it meets).
5. Prints a table per set (prefkit alone on the reference set; prefkit and mergekit on the
   equal-head set), then the issue's targets, met or not: prefkit/mergekit wall time (≤ 0.25 for
   linear and task_arithmetic, ≤ 0.08 for ties) and prefkit/floor (≤ 2.5, ≤ 5 for ties), each
   beside the same ratio for prefkit's own merge seconds (wall time also holds the interpreter
   and, unless the method merges numpy arrays (all of these do, with the C extension),
   ``import torch``: the "startup" line; a missed target says when start-up alone, or
   start-up plus one read of the inputs, is already over it). With several ``--models``, a
   scaling table (merge seconds per input GB should stay flat); with several ``--size``, the same
   merges at each size (peak RSS should stay flat). ``--json FILE`` writes every measurement.

The numbers are only as quiet as the machine: other processes running at the same time (tests,
builds) inflate them, and a 2-core machine has little slack. Use ``--repeats`` to average; the
"load" column is the 1-minute load average when each run started. On a shared machine pass
``--threads 1``: with torch's default of one thread per core, every parallel operation waits for
a worker that another process has descheduled, which made the same merge 4-7x slower here
(``--threads N`` is also passed to ``prefkit run --threads``). ``--snapshot`` runs prefkit as
committed (git archive under the cache) when the work tree may change during a long run (the
installed entry-point metadata still comes from the venv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
GENERATOR_VERSION = 1  # bump when the generated bytes change, to invalidate the cache

SIZES = {
    "base": dict(layers=12, hidden=768, intermediate=3072, heads=12, vocab=50265, positions=514),
    "large": dict(layers=24, hidden=1024, intermediate=4096, heads=16, vocab=50265, positions=514),
    "tiny": dict(layers=2, hidden=64, intermediate=128, heads=2, vocab=1000, positions=66),  # smoke
}
TASKS = (("ag_news", 4), ("imdb", 2), ("mnli", 3), ("mrpc", 2))  # the reference setup
METHODS = ("linear", "task_arithmetic", "ties", "ties_global")
DENSITY = 0.2
BASE_STD = 0.02  # RoBERTa's initializer_range
DELTA_STD = 1e-3  # size of the "fine-tuning" change
READ_CHUNK = 16 * 1024 * 1024
# The targets (medians, one run): prefkit/mergekit wall time, prefkit/floor wall time.
TARGETS = {"linear": (0.25, 2.5), "task_arithmetic": (0.25, 2.5), "ties": (0.08, 5.0),
           "ties_global": (None, 5.0)}
DEFAULT_MERGEKIT_VENV = Path("/tmp/prefkit-mergekit-venv")
TORCH_PIN = "torch==2.13.0"
MERGEKIT_PIN = "mergekit==0.1.5"


# --------------------------------------------------------------------------------------------
# Checkpoint generation (streaming: one tensor in memory at a time)
# --------------------------------------------------------------------------------------------

def roberta_config(arch: dict, num_labels: int | None) -> dict:
    """A roberta-base style config.json (as transformers and mergekit load it)."""
    from prefkit.testing import tiny_config

    config = tiny_config(num_labels, layers=arch["layers"], hidden=arch["hidden"],
                         intermediate=arch["intermediate"], vocab=arch["vocab"],
                         positions=arch["positions"], attention_heads=arch["heads"])
    config.update(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1,
                  initializer_range=BASE_STD)
    return config


def backbone_shards(arch: dict) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Tensor names and shapes of the encoder, split in two shards (embeddings + first half of the
    layers, second half of the layers), in the order they are written."""
    h, i, n = arch["hidden"], arch["intermediate"], arch["layers"]
    first: list[tuple[str, tuple[int, ...]]] = [
        ("roberta.embeddings.word_embeddings.weight", (arch["vocab"], h)),
        ("roberta.embeddings.position_embeddings.weight", (arch["positions"], h)),
        ("roberta.embeddings.token_type_embeddings.weight", (1, h)),
        ("roberta.embeddings.LayerNorm.weight", (h,)),
        ("roberta.embeddings.LayerNorm.bias", (h,)),
    ]
    second: list[tuple[str, tuple[int, ...]]] = []
    for layer in range(n):
        p = f"roberta.encoder.layer.{layer}."
        out = first if layer < n // 2 else second
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            out += [(p + name + ".weight", (h, h)), (p + name + ".bias", (h,))]
        out += [(p + "attention.output.LayerNorm.weight", (h,)),
                (p + "attention.output.LayerNorm.bias", (h,)),
                (p + "intermediate.dense.weight", (i, h)), (p + "intermediate.dense.bias", (i,)),
                (p + "output.dense.weight", (h, i)), (p + "output.dense.bias", (h,)),
                (p + "output.LayerNorm.weight", (h,)), (p + "output.LayerNorm.bias", (h,))]
    return [first, second]


def head_shard(arch: dict, num_labels: int) -> list[tuple[str, tuple[int, ...]]]:
    h = arch["hidden"]
    return [("classifier.dense.weight", (h, h)), ("classifier.dense.bias", (h,)),
            ("classifier.out_proj.weight", (num_labels, h)), ("classifier.out_proj.bias", (num_labels,))]


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _randn(shape: tuple[int, ...], *seed_parts: object) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(_seed(*seed_parts)))


def base_tensor(name: str, shape: tuple[int, ...], seed: int, variant: str = "") -> torch.Tensor:
    """The 'pretrained' value of a tensor, a function of its name (not of the writing order)."""
    t = _randn(shape, seed, "base" + variant, name)
    if name.endswith("LayerNorm.weight"):
        return t.mul_(BASE_STD).add_(1.0)
    return t.mul_(BASE_STD)


def tuned_tensor(name: str, shape: tuple[int, ...], seed: int, model: int) -> torch.Tensor:
    """base + small noise; a head (absent from the headless base) is freshly initialised."""
    if name.startswith("classifier."):
        return _randn(shape, seed, "head", model, name).mul_(BASE_STD)
    return base_tensor(name, shape, seed).add_(_randn(shape, seed, "delta", model, name).mul_(DELTA_STD))


def write_safetensors(path: Path, specs: list[tuple[str, tuple[int, ...]]],
                      make: Callable[[str, tuple[int, ...]], torch.Tensor]) -> int:
    """Stream float32 tensors into a safetensors file: header first, then each tensor as made."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        nbytes = 4
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for name, shape in specs:
            t = make(name, shape).to(torch.float32).contiguous()
            assert tuple(t.shape) == shape, (name, t.shape, shape)
            fh.write(memoryview(t.reshape(-1).numpy()).cast("B"))
    return offset


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_model(folder: Path, meta: dict, config: dict,
                 shards: list[tuple[list[tuple[str, tuple[int, ...]]], Callable | Path]]) -> Path:
    """Write (or reuse, when `meta` matches) a checkpoint folder. Each shard is (specs, maker) or
    (specs, existing file to hard-link)."""
    done = folder / "bench-meta.json"
    if done.exists() and json.loads(done.read_text()) == meta:
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = len(shards)
    weight_map, total = {}, 0
    for k, (specs, source) in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{count:05d}.safetensors"
        if isinstance(source, Path):
            _link_or_copy(source, tmp / file)
            total += sum(4 * _numel(s) for _, s in specs)
        else:
            total += write_safetensors(tmp / file, specs, source)
        weight_map.update({name: file for name, _ in specs})
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (tmp / "bench-meta.json").write_text(json.dumps(meta))
    tmp.rename(folder)
    return folder


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model_tasks(n: int) -> list[tuple[str, int]]:
    out = []
    for i in range(n):
        task, labels = TASKS[i % len(TASKS)]
        out.append((task if i < len(TASKS) else f"{task}_{i // len(TASKS) + 1}", labels))
    return out


def _params(size: str) -> int:
    return sum(_numel(s) for shard in backbone_shards(SIZES[size]) for _, s in shard)


def check_disk(size: str, n_models: int) -> None:
    """Refuse to start generating when the cache's disk cannot hold the set plus two outputs."""
    per_model = 4 * sum(_numel(s) for shard in backbone_shards(SIZES[size]) for _, s in shard)
    root = CACHE / size
    missing = sum(not (root / f"ft{i:02d}_{task}" / "bench-meta.json").exists()
                  for i, (task, _) in enumerate(model_tasks(n_models)))
    missing += not (root / "base" / "bench-meta.json").exists()
    need = (missing + 2) * per_model
    free = shutil.disk_usage(CACHE).free
    if need > free:
        sys.exit(f"not enough disk for the {size} set with {n_models} models: need ~{need / 1e9:.1f} GB "
                 f"under {CACHE}, {free / 1e9:.1f} GB free")


def build_set(size: str, n_models: int, seed: int, log: Callable[[str], None]) -> dict:
    """The reference set: base without head + n fine-tuned models with their own heads."""
    arch = SIZES[size]
    root = CACHE / size
    backbone = backbone_shards(arch)
    check_disk(size, n_models)
    common = {"generator": GENERATOR_VERSION, "size": size, "seed": seed}
    started = time.perf_counter()

    def base_make(name, shape):
        return base_tensor(name, shape, seed)

    base = _write_model(root / "base", {**common, "role": "base"}, roberta_config(arch, None),
                        [(specs, base_make) for specs in backbone])
    models = []
    for i, (task, labels) in enumerate(model_tasks(n_models)):
        folder = root / f"ft{i:02d}_{task}"

        def make(name, shape, i=i):
            return tuned_tensor(name, shape, seed, i)

        if not (folder / "bench-meta.json").exists():
            log(f"generating {folder.relative_to(REPO)} ...")
        models.append(dict(path=_write_model(
            folder, {**common, "role": "tuned", "index": i, "labels": labels},
            roberta_config(arch, labels), [*((specs, make) for specs in backbone),
                                           (head_shard(arch, labels), make)]),
            task=task, labels=labels))
    took = time.perf_counter() - started
    if took > 1:
        log(f"built the {size} set in {took:.1f}s")
    return {"name": "reference", "base": base, "models": models, "arch": arch}


def build_eqhead_set(ref: dict, size: str, seed: int) -> dict:
    """mergekit's variant: the reference backbones (hard-linked), a head on the base, and every
    fine-tuned head of the first task's label count (base head + noise)."""
    arch = ref["arch"]
    labels = ref["models"][0]["labels"]
    root = CACHE / size / "eqhead"
    common = {"generator": GENERATOR_VERSION, "size": size, "seed": seed, "labels": labels}
    backbone = backbone_shards(arch)
    heads = head_shard(arch, labels)

    def base_head(name, shape):
        return base_tensor(name, shape, seed, variant="-eqhead")

    def linked(folder: Path) -> list:
        weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        return [(specs, folder / weight_map[specs[0][0]]) for specs in backbone]

    base = _write_model(root / "base", {**common, "role": "base", "head": True},
                        roberta_config(arch, labels),
                        [*linked(ref["base"]), (heads, base_head)])
    models = []
    for i, m in enumerate(ref["models"]):
        def make(name, shape, i=i):
            return base_head(name, shape).add_(_randn(shape, seed, "eqhead", i, name).mul_(DELTA_STD * 10))

        folder = root / m["path"].name
        models.append(dict(path=_write_model(
            folder, {**common, "role": "tuned", "index": i}, roberta_config(arch, labels),
            [*linked(m["path"]), (heads, make)]), task=m["task"], labels=labels))
    return {"name": "eqhead", "base": base, "models": models, "arch": arch}


def input_files(zoo: dict) -> list[Path]:
    folders = [zoo["base"], *(m["path"] for m in zoo["models"])]
    return [f for folder in folders for f in sorted(folder.glob("*.safetensors"))]


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------

def preference(n: int) -> list[float]:
    """A descending preference (n, n-1, ..., 1), normalised to sum 1."""
    raw = list(range(n, 0, -1))
    return [round(r / sum(raw), 6) for r in raw]


def recipe(method: str, zoo: dict, *, tool: str) -> dict:
    """A recipe dict for `tool` ("prefkit" or "mergekit"). prefkit's preference p gives each model
    the weight n·p_i/Σp; mergekit gets those weights explicitly (and no prefkit-only keys)."""
    n = len(zoo["models"])
    pref = preference(n)
    weights = [round(n * p / sum(pref), 6) for p in pref]
    entries = []
    for m, w in zip(zoo["models"], weights):
        entry: dict = {"model": str(m["path"])}
        if tool == "prefkit":
            entry["task"] = m["task"]
        if tool == "mergekit" or method == "linear":
            entry["parameters"] = {"weight": w} if method != "linear" else {"weight": 1.0}
        if tool == "mergekit" and method.startswith("ties"):
            entry["parameters"]["density"] = DENSITY
        entries.append(entry)
    out: dict = {"merge_method": "ties" if method.startswith("ties") else method}
    if method != "linear":  # mergekit's linear would merge a listed base_model as one more input
        out["base_model"] = str(zoo["base"])
    out["models"] = entries
    if tool == "prefkit" and method != "linear":
        out["preference"] = pref
    params: dict = {}
    if method == "linear":
        params["normalize"] = True
    if method.startswith("ties"):
        params["normalize"] = True
        if tool == "prefkit":
            params["density"] = DENSITY
    if method == "ties_global":
        params["trim"] = "global"
    if params:
        out["parameters"] = params
    out["dtype"] = "float32"
    return out


def write_recipe(data: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------

_READ_BUF = memoryview(bytearray(READ_CHUNK))


def read_all(files: list[Path]) -> int:
    """Read every byte of `files` once, sequentially, in 16 MiB chunks; the bytes read."""
    total = 0
    for file in files:
        with open(file, "rb", buffering=0) as fh:
            while n := fh.readinto(_READ_BUF):
                total += n
    return total


def timed_read(files: list[Path]) -> float:
    t0 = time.perf_counter()
    read_all(files)
    return time.perf_counter() - t0


class Floor:
    """The floor: seconds to read every input byte once from a warm page cache. Sampled at the
    start (after a warm-up read) and again before each round; the reported floor is the fastest
    sample (a floor is a lower bound; slower samples are other load on the machine)."""

    def __init__(self, files: list[Path], repeats: int):
        self.files = files
        self.nbytes = read_all(files)  # warm-up: brings everything into the page cache
        self.samples = [timed_read(files) for _ in range(max(1, repeats))]

    def sample(self) -> None:
        self.samples.append(timed_read(self.files))

    @property
    def seconds(self) -> float:
        return min(self.samples)

    def as_dict(self) -> dict:
        return {"bytes": self.nbytes, "seconds": self.seconds, "median_s": statistics.median(self.samples),
                "samples": self.samples, "gb_per_s": self.nbytes / self.seconds / 1e9,
                "files": len(self.files), "cache": "warm"}

    def describe(self) -> str:
        return (f"{self.nbytes / 1e9:.2f} GB in {self.seconds:.2f}s ({self.nbytes / self.seconds / 1e9:.1f} "
                f"GB/s; fastest of {len(self.samples)}, median {statistics.median(self.samples):.2f}s)")


def _proc_status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


# A lean launcher between the benchmark and each measured command. Linux carries the RSS
# high-water mark of the process image that exec replaces into the new program's ru_maxrss, so
# a command started straight from this (torch-importing, diff-computing) process would report at
# least this process's own peak. The launcher (`python -S`, ~10 MB) spawns the command, waits
# for it, and reports the command's own rusage and wall time.
LAUNCHER = r"""
import json, os, sys, time
out = sys.argv[1]
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
with open(out + ".pid", "w") as f:
    f.write(str(pid))
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall_s": wall, "maxrss_kb": ru.ru_maxrss,
               "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "minor_faults": ru.ru_minflt}, f)
"""


def measure(cmd: list[str], *, env: dict | None = None, log_to: Path | None = None,
            poll_s: float = 0.02, prewarm: list[Path] | None = None) -> dict:
    """Run `cmd` through the launcher (in the cache folder, so `python -c` does not import the work
    tree's prefkit through the current directory): its wall time, own peak RSS (wait4), CPU
    times, minor faults, and the peak RssAnon/RssFile seen by polling /proc every `poll_s`.

    `prewarm` files are read (untimed) just before, so every run starts from a warm page cache
    like the floor, whatever ran or was reclaimed in between."""
    os.sync()  # earlier runs' dirty output pages are not flushed on this run's clock
    if prewarm:
        read_all(prewarm)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        report = Path(tmp) / "rusage.json"
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(report), *cmd],
                                stdout=out, stderr=err, env=env, cwd=CACHE)
        peak_anon = peak_file = 0
        child = None
        while proc.poll() is None:
            if child is None and (Path(tmp) / "rusage.json.pid").exists():
                text = (Path(tmp) / "rusage.json.pid").read_text()
                child = int(text) if text else None
            if child is not None:
                st = _proc_status_kb(child)
                peak_anon = max(peak_anon, st.get("RssAnon", 0))
                peak_file = max(peak_file, st.get("RssFile", 0))
            time.sleep(poll_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        usage = json.loads(report.read_text()) if report.exists() else None
    if log_to is not None:
        log_to.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    if proc.returncode != 0 or usage is None or usage["code"] != 0:
        raise RuntimeError(f"command failed ({usage and usage['code']}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return {"wall_s": usage["wall_s"], "maxrss_mb": usage["maxrss_kb"] / 1024,
            "peak_anon_mb": peak_anon / 1024, "peak_file_mb": peak_file / 1024,
            "user_s": usage["user_s"], "sys_s": usage["sys_s"], "minor_faults": usage["minor_faults"],
            "load1_before": load_before, "load1_after": os.getloadavg()[0], "stdout": stdout}


def source_state() -> dict:
    """The commit and a content hash of prefkit's Python sources (the tree may change under a run)."""
    h = hashlib.sha256()
    files = sorted([*(REPO / "prefkit").rglob("*.py"), *(REPO / "plugins").rglob("*.py")])
    for f in files:
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())

    def git(*a: str) -> str:
        proc = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else "?"

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "prefkit", "plugins").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": dirty, "sources_sha256": h.hexdigest()}


SNAPSHOT: Path | None = None  # set by --snapshot: children import prefkit from here
THREADS: int | None = None  # set by --threads: torch's intra-op threads in every child


def make_snapshot(rev: str) -> tuple[Path, str]:
    """Export prefkit's package and plugins at `rev` (git archive) as an importable folder, so a
    long benchmark measures one version while the work tree changes."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    root = CACHE / "snapshots" / sha
    if not (root / "prefkit" / "plugins" / "__init__.py").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", sha, "prefkit", "plugins"], cwd=REPO,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        (root / "plugins").rename(root / "prefkit" / "plugins")  # pyproject's package-dir mapping
        build_extensions(root, sha)
    return root, sha


def build_extensions(root: Path, sha: str) -> None:
    """Build the C extensions of `sha` (its setup.py) into the snapshot, as `pip install` does
    (a snapshot without them would measure the eager path)."""
    setup = subprocess.run(["git", "show", f"{sha}:setup.py"], cwd=REPO, capture_output=True,
                           text=True)
    if setup.returncode != 0:  # a commit from before the extension
        return
    (root / "setup.py").write_text(setup.stdout)
    if not (root / "plugins").exists():  # setup.py names plugins/ties/_kernels.c by its repo path
        (root / "plugins").symlink_to(Path("prefkit") / "plugins")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=root,
                   check=True, capture_output=True)


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if THREADS is not None:
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    if SNAPSHOT is not None:  # ahead of the editable install's finder (appended to meta_path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SNAPSHOT), env.get("PYTHONPATH")]))
    return env


def check_prefkit_origin() -> str:
    """Where the children import prefkit and its plugins from."""
    code = ("import prefkit, prefkit.plugins.ties as t; print(prefkit.__file__); print(t.__file__)\n"
            "import importlib.util as u\n"
            "def spec(name):\n"
            "    try: return u.find_spec(name)\n"
            "    except ImportError: return None\n"  # (snapshots from before TIES was a package)
            "spec = spec('prefkit.plugins.ties._kernels') or spec('prefkit._kernels')\n"
            "print(spec.origin if spec else '-')")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=CACHE, capture_output=True,
                          text=True, check=True)
    *files, kernels = proc.stdout.split()
    if SNAPSHOT is not None and not all(f.startswith(str(SNAPSHOT)) for f in files):
        raise RuntimeError(f"the snapshot is not what the children import: {files}")
    if SNAPSHOT is not None and kernels != "-" and not kernels.startswith(str(SNAPSHOT)):
        raise RuntimeError(f"the snapshot's C kernels are not what the children load: {kernels}")
    where = str(Path(files[0]).parent)
    return where + ("; C kernels: " + ("none (eager torch path)" if kernels == "-" else "built"))


def prefkit_cmd(recipe_path: Path, out: Path) -> list[str]:
    threads = ["--threads", str(THREADS)] if THREADS is not None else []
    return [sys.executable, "-c", "from prefkit.cli import main; main()", "run", str(recipe_path),
            "-o", str(out), "-q", "--force", *threads]


def run_prefkit(recipe_path: Path, out: Path, log: Path, inputs: list[Path]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = measure(prefkit_cmd(recipe_path, out), env=_env(), log_to=log, prewarm=inputs)
    line = json.loads(result.pop("stdout").strip().splitlines()[-1])
    if line.get("status") != "ok":
        raise RuntimeError(f"prefkit failed: {line}")
    result["merge_s"] = line["seconds"]
    return result


def run_mergekit(venv: Path, recipe_path: Path, out: Path, log: Path, inputs: list[Path]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(venv / "bin" / "mergekit-yaml"), str(recipe_path), str(out), "--quiet",
           "--no-copy-tokenizer"]  # the generated checkpoints have no tokenizer
    result = measure(cmd, env=_env(), log_to=log, prewarm=inputs)
    result.pop("stdout")
    return result


# Merges that run on numpy arrays and never import torch (`TensorMethod.takes_numpy`; linear
# and TIES need prefkit's C extension for it, which `--snapshot` builds and reports).
TORCH_FREE = {"linear", "task_arithmetic", "ties", "ties_global"}


def startup_cost(repeats: int, torch: bool = True) -> float:
    """Seconds for a child that only starts Python, imports what `prefkit run` imports (torch
    too, or not: a linear merge does not) and exits through the CLI's entry point (as a merge
    does: its exit is part of every wall time)."""
    code = (("import torch; " if torch else "") +
            "import safetensors, pydantic, yaml, click; import prefkit.cli, prefkit.engine.executor, "
            "prefkit.recipe.resolve; from prefkit.registry import load_registry; load_registry(); "
            "prefkit.cli.main(['--version'])")
    return statistics.median(measure([sys.executable, "-c", code], env=_env())["wall_s"]
                             for _ in range(max(1, repeats)))


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def max_abs_diff(a: Path, b: Path) -> dict:
    """Largest |a - b| over the tensors both outputs hold, and the names only one holds."""
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as fh:
                out.update({k: file for k in fh.keys()})  # noqa: SIM118
        return out

    ia, ib = index(a), index(b)
    worst, worst_name, differing, total = 0.0, None, 0, 0
    for name in sorted(set(ia) & set(ib)):
        with safe_open(str(ia[name]), framework="pt") as fa, safe_open(str(ib[name]), framework="pt") as fb:
            ta, tb = fa.get_tensor(name).double(), fb.get_tensor(name).double()
        if ta.shape != tb.shape:
            return {"max_abs_diff": None, "error": f"{name}: shapes {list(ta.shape)} vs {list(tb.shape)}"}
        d = float((ta - tb).abs().max()) if ta.numel() else 0.0
        differing += int((ta != tb).sum())
        total += ta.numel()
        if d > worst:
            worst, worst_name = d, name
    return {"max_abs_diff": worst, "worst_tensor": worst_name, "differing": differing, "total": total,
            "only_prefkit": sorted(set(ia) - set(ib)), "only_mergekit": sorted(set(ib) - set(ia))}


# --------------------------------------------------------------------------------------------
# mergekit venv
# --------------------------------------------------------------------------------------------

def ensure_mergekit(venv: Path, log: Callable[[str], None]) -> Path:
    exe = venv / "bin" / "mergekit-yaml"
    if exe.exists():
        return venv
    log(f"installing {MERGEKIT_PIN} into {venv} (torch first, pinned; this takes a few minutes)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    constraints = venv / "bench-constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, "-c", str(constraints), MERGEKIT_PIN], check=True)
    if not exe.exists():
        raise RuntimeError(f"{exe} missing after installing {MERGEKIT_PIN}")
    return venv


def mergekit_version(venv: Path) -> str:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'), "
                           "m.version('transformers'))"], capture_output=True, text=True)
    parts = proc.stdout.split()
    return f"mergekit {parts[0]}, torch {parts[1]}, transformers {parts[2]}" if len(parts) == 3 else "?"


# --------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------

PROFILE_CODE = """
import cProfile, sys
from prefkit.cli import main
prof = cProfile.Profile()
try:
    prof.runcall(main, sys.argv[2:])
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
prof.dump_stats(sys.argv[1])
"""


def profile_run(recipe_path: Path, out: Path, stats_path: Path, top: int) -> str:
    """cProfile one prefkit run (main thread only: the reader thread's time shows up in the main
    thread as waiting on the future) and return the top functions by own time and cumulative."""
    import io
    import pstats

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", PROFILE_CODE, str(stats_path), "run", str(recipe_path), "-o",
           str(out), "-q", "--force"]
    subprocess.run(cmd, check=True, env=_env(), cwd=CACHE, stdout=subprocess.DEVNULL)
    buf = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    shutil.rmtree(out, ignore_errors=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join([line, sep, *body])


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def bench_reference(ref: dict, work: Path, methods: list[str], repeats: int,
                    log: Callable[[str], None]) -> dict:
    """prefkit on the reference set: floor, then `repeats` rounds over the methods."""
    out: dict = {}
    inputs = input_files(ref)
    floor = Floor(inputs, repeats)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(repeats):
        floor.sample()
        for method in methods:
            path = write_recipe(recipe(method, ref, tool="prefkit"), work / f"prefkit-{method}.yaml")
            res = run_prefkit(path, work / "out-prefkit", work / f"prefkit-{method}.log", inputs)
            runs[method].append(res)
            log(f"round {r + 1}/{repeats} {method}: {res['wall_s']:.2f}s, {res['maxrss_mb']:.0f} MB RSS")
    shutil.rmtree(work / "out-prefkit", ignore_errors=True)
    out["floor"] = floor.as_dict()
    print("floor (warm page cache, sequential 16 MiB reads of every input byte once): " + floor.describe())
    rows = []
    out["prefkit"] = {}
    for method in methods:
        wall = median_of(runs[method], "wall_s")
        summary = {key: median_of(runs[method], key) for key in (
            "wall_s", "merge_s", "maxrss_mb", "peak_anon_mb", "user_s", "sys_s", "minor_faults",
            "load1_before")}
        summary.update(ratio_floor=wall / floor.seconds, runs=runs[method])
        out["prefkit"][method] = summary
        rows.append([method, fmt(wall), fmt(summary["merge_s"]), fmt(summary["user_s"], 1),
                     fmt(summary["sys_s"], 1), fmt(summary["minor_faults"] / 1e6, 2),
                     fmt(summary["maxrss_mb"], 0), fmt(summary["peak_anon_mb"], 0),
                     fmt(floor.seconds), fmt(summary["ratio_floor"], 1), fmt(summary["load1_before"], 1)])
    heads = "/".join(str(m["labels"]) for m in ref["models"])
    print()
    print(f"prefkit on the reference set ({len(ref['models'])} models, heads {heads}, base without "
          f"head), median of {repeats}; the floor is warm-cache:")
    print(table(["method", "wall s", "merge s", "user s", "sys s", "faults M", "peak RSS MB",
                 "peak anon MB", "floor s", "wall/floor", "load"], rows))
    return out


def bench_mergekit(ref: dict, work: Path, methods: list[str], rounds: int, floor_repeats: int,
                   venv: Path, size: str, seed: int, log: Callable[[str], None]) -> dict:
    """prefkit and mergekit-yaml, alternately, on the equal-head variant of the set."""
    eq = build_eqhead_set(ref, size, seed)
    inputs = input_files(eq)
    floor = Floor(inputs, floor_repeats)
    out: dict = {"mergekit_version": mergekit_version(venv)}
    cmp_methods = [m for m in methods if m != "ties_global"]
    pk: dict[str, list[dict]] = {m: [] for m in cmp_methods}
    mk: dict[str, list[dict]] = {m: [] for m in cmp_methods}
    diffs = {}
    for r in range(rounds):
        floor.sample()
        for method in cmp_methods:
            p_recipe = write_recipe(recipe(method, eq, tool="prefkit"), work / f"eq-prefkit-{method}.yaml")
            m_recipe = write_recipe(recipe(method, eq, tool="mergekit"), work / f"eq-mergekit-{method}.yaml")
            p_out, m_out = work / f"eq-out-prefkit-{method}", work / f"eq-out-mergekit-{method}"
            pk[method].append(run_prefkit(p_recipe, p_out, work / f"eq-prefkit-{method}.log", inputs))
            mk[method].append(run_mergekit(venv, m_recipe, m_out, work / f"eq-mergekit-{method}.log", inputs))
            log(f"mergekit round {r + 1}/{rounds} {method}: prefkit {pk[method][-1]['wall_s']:.2f}s "
                f"{pk[method][-1]['maxrss_mb']:.0f} MB, mergekit {mk[method][-1]['wall_s']:.2f}s "
                f"{mk[method][-1]['maxrss_mb']:.0f} MB")
            if r == rounds - 1:  # the last round's outputs: compare them
                diffs[method] = max_abs_diff(p_out, m_out)
            shutil.rmtree(p_out, ignore_errors=True)
            shutil.rmtree(m_out, ignore_errors=True)
    out["eqhead_floor"] = floor.as_dict()
    rows = []
    out["methods"] = {}
    for method in methods:
        if method not in cmp_methods:
            rows.append([method, *["n/a"] * 13])
            continue
        pw, mw = median_of(pk[method], "wall_s"), median_of(mk[method], "wall_s")
        entry = {
            tool: {key: median_of(runs, key) for key in (
                "wall_s", "maxrss_mb", "peak_anon_mb", "user_s", "sys_s", "minor_faults",
                "load1_before")} | {"runs": runs}
            for tool, runs in (("prefkit", pk[method]), ("mergekit", mk[method]))
        }
        entry["prefkit"]["merge_s"] = median_of(pk[method], "merge_s")
        entry.update(floor_s=floor.seconds, ratio_prefkit_mergekit=pw / mw,
                     output_diff=diffs.get(method))
        out["methods"][method] = entry
        d = (diffs.get(method) or {}).get("max_abs_diff")
        rows.append([method, fmt(pw), fmt(entry["prefkit"]["merge_s"]),
                     fmt(entry["prefkit"]["maxrss_mb"], 0),
                     fmt(entry["prefkit"]["peak_anon_mb"], 0), fmt(floor.seconds),
                     fmt(pw / floor.seconds, 1), fmt(mw), fmt(entry["mergekit"]["maxrss_mb"], 0),
                     fmt(entry["mergekit"]["peak_anon_mb"], 0), fmt(pw / mw, 2),
                     "n/a" if d is None else f"{d:.1e}",
                     "n/a" if d is None else f"{diffs[method]['differing']}/{diffs[method]['total']}",
                     fmt(entry["prefkit"]["load1_before"], 1)])
    labels = eq["models"][0]["labels"]
    print(f"floor of the equal-head set: {floor.describe()}")
    print()
    print(f"prefkit vs {out['mergekit_version']} on the equal-head set ({len(eq['models'])} models; "
          f"the base has a {labels}-label head and every model's head has {labels} labels; same "
          f"backbones as above), median of {rounds} alternating rounds (prefkit, then mergekit); "
          "ties_global has no mergekit counterpart; max |diff| and differing (elements) compare the "
          "two outputs of the last round:")
    print(table(["method", "prefkit s", "prefkit merge s", "prefkit RSS MB", "prefkit anon MB",
                 "floor s", "prefkit/floor", "mergekit s", "mergekit RSS MB", "mergekit anon MB",
                 "prefkit/mergekit", "max |diff|", "differing", "load"], rows))
    for method, d in diffs.items():
        if d.get("only_prefkit") or d.get("only_mergekit") or d.get("error"):
            print(f"  {method}: the outputs differ in layout: {d}")
    return out


def scaling_table(per_n: dict[int, dict], methods: list[str], size: str) -> None:
    """Wall and merge seconds, peak RSS and seconds per input GB for each model count: the cost
    should grow with the input bytes (s/GB flat) and memory should not."""
    counts = [n for n in per_n if "prefkit" in per_n[n]]
    if len(counts) < 2:
        return
    headers = ["method"]
    for n in counts:
        headers += [f"N={n} s", f"N={n} merge s", f"N={n} RSS MB", f"N={n} merge s/GB",
                    f"N={n} x floor"]
    rows = []
    for method in methods:
        row = [method]
        for n in counts:
            st, gb = per_n[n]["prefkit"][method], per_n[n]["floor"]["bytes"] / 1e9
            row += [fmt(st["wall_s"]), fmt(st["merge_s"]), fmt(st["maxrss_mb"], 0),
                    fmt(st["merge_s"] / gb), fmt(st["ratio_floor"], 1)]
        rows.append(row)
    floors = ", ".join(f"N={n}: {per_n[n]['floor']['bytes'] / 1e9:.1f} GB in "
                       f"{per_n[n]['floor']['seconds']:.2f}s" for n in counts)
    print()
    print(f"scaling with the number of models ({size}, prefkit, reference sets; warm floors {floors}):")
    print(table(headers, rows))


def size_table(per_size: dict[str, dict], n: int, methods: list[str]) -> None:
    """The same merge at each model size: peak memory should stay flat while the bytes grow."""
    sizes = [size for size in per_size if "prefkit" in per_size[size].get(n, {})]
    if len(sizes) < 2:
        return
    headers = ["method"]
    for size in sizes:
        headers += [f"{size} s", f"{size} merge s", f"{size} RSS MB", f"{size} x floor"]
    rows = []
    for method in methods:
        row = [method]
        for size in sizes:
            st = per_size[size][n]["prefkit"][method]
            row += [fmt(st["wall_s"]), fmt(st["merge_s"]), fmt(st["maxrss_mb"], 0),
                    fmt(st["ratio_floor"], 1)]
        rows.append(row)
    described = ", ".join(f"{size}: {per_size[size]['params'] / 1e6:.0f}M params, "
                          f"{per_size[size][n]['floor']['bytes'] / 1e9:.1f} GB read in "
                          f"{per_size[size][n]['floor']['seconds']:.2f}s" for size in sizes)
    print()
    print(f"memory as models grow (N={n}; {described}):")
    print(table(headers, rows))


def target_lines(one: dict, methods: list[str], startups: dict[str, float]) -> list[str]:
    """The issue's targets, met or not: wall-time ratios (medians), with prefkit's own merge
    seconds beside them (wall = merge + Python start-up and imports: `startups`, with and
    without torch)."""
    def verdict(value: float, target: float | None, least: float, what: str) -> str:
        if target is None:
            return ""
        if value <= target:
            return f" (target ≤ {target:g}: met)"
        # start-up (python and imports) alone may already be over the target's budget
        reach = f", out of reach in a fresh process: {what} give {least:.2f}" if least > target else ""
        return f" (target ≤ {target:g}: NOT met{reach})"

    lines = []
    for method in methods:
        vs_mergekit, vs_floor = TARGETS[method]
        startup_s = startups["numpy" if method in TORCH_FREE else "torch"]
        parts = []
        ref = one.get("prefkit", {}).get(method)
        if ref is not None:
            ratio = ref["wall_s"] / one["floor"]["seconds"]
            startup = startup_s / one["floor"]["seconds"]
            met = verdict(ratio, vs_floor, startup, "start-up alone would")
            parts.append(f"prefkit/floor {ratio:.2f}{met}, merge only "
                         f"{ref['merge_s'] / one['floor']['seconds']:.2f}")
        cmp = one.get("vs_mergekit", {}).get("methods", {}).get(method)
        if cmp is not None:
            pk, mk = cmp["prefkit"], cmp["mergekit"]
            ratio = pk["wall_s"] / mk["wall_s"]
            # start-up plus the fastest possible merge (reading the inputs once)
            least = (startup_s + cmp.get("floor_s", 0.0)) / mk["wall_s"]
            met = verdict(ratio, vs_mergekit, least, "start-up and one read of the inputs would")
            parts.append(f"prefkit/mergekit {ratio:.3f}{met}, merge only vs mergekit wall "
                         f"{pk['merge_s'] / mk['wall_s']:.3f}")
        load = (ref or (cmp or {}).get("prefkit") or {}).get("load1_before")
        if parts:
            lines.append(f"  {method}: " + "; ".join(parts) + (f"; load {load:.1f}" if load else ""))
    if lines:
        lines.insert(0, f"targets (wall time, medians; prefkit start-up ~{startups['torch']:.1f}s "
                        f"of each wall, ~{startups['numpy']:.1f}s without torch: "
                        f"{', '.join(sorted(TORCH_FREE))}):")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="base",
                    help="base (~125M params) or large (~355M), or a comma list (base,large: a "
                    "memory-as-models-grow table); tiny is a smoke-test size")
    ap.add_argument("--models", default="4",
                    help="fine-tuned models, or a comma list for a scaling table (e.g. 2,4,8)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per method (median reported)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vs-mergekit", action="store_true", help="also run mergekit-yaml (0.1.5)")
    ap.add_argument("--mergekit-repeats", type=int, default=None,
                    help="alternating prefkit/mergekit rounds (default: --repeats)")
    ap.add_argument("--mergekit-venv", type=Path, default=DEFAULT_MERGEKIT_VENV,
                    help="throwaway venv for mergekit, created when missing (outside the repository)")
    ap.add_argument("--skip-reference", action="store_true",
                    help="with --vs-mergekit: only the mergekit comparison")
    ap.add_argument("--profile", metavar="METHOD", choices=METHODS,
                    help="also cProfile one prefkit run of METHOD and print the top functions")
    ap.add_argument("--snapshot", nargs="?", const="HEAD", metavar="REV",
                    help="benchmark prefkit as committed at REV (default HEAD), exported under the cache, "
                    "instead of the work tree (which others may be editing during a long run)")
    ap.add_argument("--threads", type=int, metavar="N",
                    help="torch threads in every child, prefkit's and mergekit's (OMP_NUM_THREADS); "
                    "default: torch's own choice (one per core). Use 1 on a machine that other work "
                    "shares: torch's thread pool then waits on descheduled workers at every operation")
    ap.add_argument("--json", type=Path, help="write all results to this file")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s): {', '.join(sorted(unknown))}")
    try:
        counts = [int(x) for x in args.models.split(",") if x.strip()]
    except ValueError:
        ap.error("--models takes a number or a comma list of numbers")
    if not counts or min(counts) < 1:
        ap.error("--models must be >= 1")
    sizes = [x.strip() for x in args.size.split(",") if x.strip()]
    if not sizes or set(sizes) - set(SIZES):
        ap.error(f"--size takes one or more of {', '.join(sorted(SIZES))}")

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "sizes": {size: {"params": _params(size), "sets": {}} for size in sizes},
        "repeats": args.repeats, "methods": methods,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform()},
    }
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, python "
          f"{platform.python_version()}; " + ", ".join(
              f"size {size}: {_params(size) / 1e6:.1f}M backbone params" for size in sizes) + ", fp32")
    global SNAPSHOT, THREADS
    THREADS = args.threads
    results["threads"] = args.threads
    print(f"torch threads per child: {args.threads or 'default (one per core)'}; load average now "
          f"{os.getloadavg()[0]:.1f} (other work on the machine slows every number here)")
    if args.snapshot:
        SNAPSHOT, sha = make_snapshot(args.snapshot)
        state = results["prefkit_source"] = {"snapshot": sha, "path": str(SNAPSHOT)}
        print(f"prefkit: snapshot of commit {sha} ({check_prefkit_origin()})")
    else:
        state = results["prefkit_source"] = source_state()
        print(f"prefkit: work tree at commit {state['commit']}"
              + (f" + uncommitted changes in {', '.join(state['dirty'])}" if state["dirty"] else "")
              + f" ({check_prefkit_origin()})")
    venv = ensure_mergekit(args.mergekit_venv, log) if args.vs_mergekit else None
    results["startup_s"] = startup_cost(args.repeats)
    results["startup_numpy_s"] = startup_cost(args.repeats, torch=False)
    print(f"startup (python + imports + plugin registry, no merge): {results['startup_s']:.2f}s, "
          f"{results['startup_numpy_s']:.2f}s without torch ({', '.join(sorted(TORCH_FREE))})")
    for size, n in ((size, n) for size in sizes for n in counts):
        ref = build_set(size, n, args.seed, log)
        work = CACHE / "runs" / f"{size}-{n}"
        work.mkdir(parents=True, exist_ok=True)
        tasks = ", ".join(f"{m['task']}:{m['labels']}" for m in ref["models"])
        print()
        print(f"set: base without head + {n} fine-tuned ({tasks} labels) under "
              f"{(CACHE / size).relative_to(REPO)}")
        one: dict = {}
        if not args.skip_reference:
            one.update(bench_reference(ref, work, methods, args.repeats, log))
        if venv is not None:
            one["vs_mergekit"] = bench_mergekit(ref, work, methods, args.mergekit_repeats or args.repeats,
                                                args.repeats, venv, size, args.seed, log)
        lines = target_lines(one, methods, {"torch": results["startup_s"],
                                            "numpy": results["startup_numpy_s"]})
        if lines:
            print()
            print("\n".join(lines))
        if args.profile and n == counts[0] and size == sizes[0]:
            path = write_recipe(recipe(args.profile, ref, tool="prefkit"),
                                work / f"profile-{args.profile}.yaml")
            text = profile_run(path, work / "out-profile", work / f"profile-{args.profile}.prof", 20)
            one["profile"] = text
            print()
            print(f"cProfile of one prefkit {args.profile} run ({n} models; main thread only: input "
                  "reads run on the prefkit-read thread and show here as waits on its future):")
            print(text)
        results["sizes"][size]["sets"][str(n)] = one
    for size in sizes:
        scaling_table({int(n): v for n, v in results["sizes"][size]["sets"].items()}, methods, size)
    size_table({size: {"params": r["params"], **{int(n): v for n, v in r["sets"].items()}}
                for size, r in results["sizes"].items()}, counts[0], methods)
    after = results["prefkit_source_after"] = source_state()
    if not args.snapshot and after["sources_sha256"] != state["sources_sha256"]:
        print(f"\nWARNING: prefkit's sources changed during the run (commit {state['commit']} -> "
              f"{after['commit']}); the numbers above mix versions")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
