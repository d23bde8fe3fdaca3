"""The streaming executor: one tensor group in memory at a time, output bytes straight to disk.

For each planned tensor: read its inputs into fresh buffers, cast to the compute dtype, zero-pad heads,
call the method's `merge`, cast to the output dtype and append to the open shard. The next group is
read on a background thread while the current one is merged. Output goes to a temporary sibling
folder that is renamed into place only when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

import prefkit
from prefkit.api import ScanItem
from prefkit.errors import MergeError, OutputError, PrefkitError
from prefkit.io.checkpoint import TensorMeta, TensorReader
from prefkit.io.hub import TOKENIZER_FILES
from prefkit.io.outdir import (
    check_replaceable,
    recover_interrupted,
    replace_folder,
    temp_sibling,
    write_error,
)
from prefkit.io.writer import OutTensor, ShardWriter, plan_shards
from prefkit.plan import Plan, TensorPlan, fingerprint
from prefkit.progress import NullReporter, Reporter

DEFAULT_SHARD_BYTES = 5 * 1000**3


@dataclass(frozen=True)
class RunResult:
    output: Path
    tensors: int
    bytes_written: int
    seconds: float


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


class _Loader:
    """Reads a tensor group: inputs and base in the compute dtype, heads zero-padded.

    `uses_base`: the method takes a base (a tensor the base lacks, e.g. a classifier head, is
    then zeros); otherwise the base is not read at all.
    """

    def __init__(self, uses_base: bool, allow_nonfinite: bool = False):
        self.reader = TensorReader(check_finite=not allow_nonfinite)
        self.uses_base = uses_base

    def _read(self, meta: TensorMeta | None, plan: TensorPlan):
        import torch

        dtype = _torch_dtype(plan.compute_dtype)
        if meta is None:
            return torch.zeros(plan.shape, dtype=dtype)
        tensor = self.reader.read(meta)
        if tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if tuple(tensor.shape) != plan.shape:
            padded = torch.zeros(plan.shape, dtype=dtype)
            padded[tuple(slice(0, d) for d in tensor.shape)] = tensor
            tensor = padded
        return tensor

    def load(self, plan: TensorPlan):
        if plan.copy:
            return [self.reader.read(plan.base or plan.sources[0])], None
        tensors = [self._read(meta, plan) for meta in plan.sources]
        base = self._read(plan.base, plan) if self.uses_base else None
        return tensors, base


def execute(plan: Plan, *, reporter: Reporter | None = None, force: bool = False,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES, allow_nonfinite: bool = False, state=None,
            files=None) -> RunResult:
    """Run a Plan and write its output folder. An input tensor holding NaN/Inf is an error unless
    `allow_nonfinite`. Solver methods pass their learned `state` (it reaches `merge` as
    `info.state`; `prepare` is not called) and `files` (name → text, written into the output).

    Raises:
        OutputError: the output exists and `force` is false, or cannot be written (disk full).
        MergeError / CheckpointError: a method or an input failed; nothing is left behind.
    """
    reporter = reporter or NullReporter()
    out = plan.output
    for note in recover_interrupted(out):
        reporter.note(note)
    if out.exists():
        if not force:
            raise OutputError(f"output {out} already exists", hint="pass --force to replace it, or -o")
        check_replaceable(out)
    tmp = temp_sibling(out)
    started = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        total = _write_tensors(plan, tmp, reporter, max_shard_bytes, allow_nonfinite, state)
        seconds = time.perf_counter() - started
        _write_side_files(plan, tmp, seconds)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        replace_folder(tmp, out)
    except OSError as exc:  # reading errors are CheckpointErrors: this is the output side
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        reporter.finish()
    return RunResult(out, len(plan.tensors), total, seconds)


def _write_tensors(plan: Plan, folder: Path, reporter: Reporter, max_shard_bytes: int,
                   allow_nonfinite: bool = False, state=None) -> int:
    outs = [OutTensor(p.name, p.out_dtype, p.shape) for p in plan.tensors]
    shards = plan_shards(outs, max_shard_bytes)
    writer = ShardWriter(folder, shards, {
        "format": "pt", "prefkit_version": prefkit.__version__,
        "recipe_sha256": plan.loaded.digest,
    })
    method = plan.method.method
    uses_base = plan.base is not None and method.base == "required"
    loader = _Loader(uses_base, allow_nonfinite)
    if state is None:
        state = method.prepare(lambda: _scan(plan, _Loader(uses_base, allow_nonfinite)),
                               plan.shared_params)
    total = sum(o.nbytes for o in outs)
    reporter.start(len(outs), total, f"{method.name} → {plan.output}")
    try:
        # Reading the next group overlaps merging this one, unless the two together would
        # outgrow the largest single group: peak memory stays that of the largest group.
        sizes = [_group_bytes(tp, uses_base) for tp in plan.tensors]
        limit = max(sizes, default=0)
        n = len(plan.tensors)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefkit-read") as pool:
            pending = pool.submit(loader.load, plan.tensors[0]) if plan.tensors else None
            for i, tp in enumerate(plan.tensors):
                tensors, base = pending.result()
                overlap = i + 1 < n and sizes[i] + sizes[i + 1] <= limit
                if overlap:
                    pending = pool.submit(loader.load, plan.tensors[i + 1])
                if tp.copy:
                    result = tensors[0]
                else:
                    result = _merge_one(plan, tp, tensors, base, state)
                    result = result.to(_torch_dtype(tp.out_dtype))
                writer.write(tp.name, result)
                reporter.advance(tp.name, outs[i].nbytes)
                del tensors, base, result
                if i + 1 < n and not overlap:
                    pending = pool.submit(loader.load, plan.tensors[i + 1])
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        loader.reader.close()
    return total


def _group_bytes(tp: TensorPlan, uses_base: bool) -> int:
    count = len(tp.sources) + (1 if uses_base and not tp.copy else 0)
    return count * OutTensor(tp.name, tp.compute_dtype, tp.shape).nbytes


def _merge_one(plan: Plan, tp: TensorPlan, tensors, base, state):
    from dataclasses import replace

    method = plan.method.method
    info = replace(tp.info, state=state) if state is not None else tp.info
    try:
        result = method.merge(tensors, base=base, params=tp.params, model_params=tp.model_params,
                              info=info)
    except PrefkitError:
        raise
    except Exception as exc:
        raise MergeError(
            f"method {method.name!r} (plugin {plan.method.plugin!r}) failed on tensor "
            f"{tp.name!r}: {type(exc).__name__}: {exc}",
            hint="run with --traceback for details; report it to the plugin's authors",
        ) from exc
    if tuple(result.shape) != tp.shape:
        raise MergeError(f"method {method.name!r} returned shape {list(result.shape)} for tensor "
                         f"{tp.name!r}, expected {list(tp.shape)}")
    return result


def _scan(plan: Plan, loader: _Loader):
    """Yield every mergeable tensor group for a method's pre-pass, re-reading the inputs."""
    try:
        for tp in plan.tensors:
            if tp.copy:
                continue
            tensors, base = loader.load(tp)
            yield ScanItem(tp.info, tensors, base, tp.model_params)
    finally:
        loader.reader.close()


def _write_side_files(plan: Plan, folder: Path, seconds: float) -> None:
    if plan.out_config is not None:
        (folder / "config.json").write_text(json.dumps(plan.out_config, indent=2, sort_keys=True) + "\n")
    if plan.tokenizer_source is not None:
        for pattern in TOKENIZER_FILES:
            for file in sorted(plan.tokenizer_source.glob(pattern)):
                shutil.copyfile(file, folder / file.name)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(plan.loaded.data, sort_keys=False))
    models = [m for m in (plan.base, *plan.inputs) if m is not None]
    provenance = {
        "prefkit_version": prefkit.__version__,
        "method": plan.method.method.name,
        "plugin": plan.method.plugin,
        "recipe": str(plan.loaded.path),
        "recipe_sha256": plan.loaded.digest,
        "plan_sha256": plan.digest,
        "inputs": [{"model": m.label, "path": str(m.path), "task": m.task,
                    "fingerprint": fingerprint(m.checkpoint),
                    "role": "base" if m is plan.base else "model",
                    "id2label": (m.checkpoint.config or {}).get("id2label"),
                    "labels": list(m.labels) if m.labels else None} for m in models],
        "heads": plan.loaded.recipe.heads,
        "head_tensors": plan.head_tensors,
        "preference": plan.loaded.recipe.preference,
        "notes": list(plan.notes),
        "timings": {"merge_seconds": round(seconds, 3)},
    }
    (folder / "prefkit.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if plan.loaded.recipe.heads == "per_task":
        _write_task_heads(plan, folder / "heads")


def _write_task_heads(plan: Plan, folder: Path) -> None:
    """Each task's own (unpadded) head tensors, for evaluation with per-task heads."""
    from safetensors.torch import save_file

    folder.mkdir()
    reader = TensorReader()
    try:
        for model in plan.inputs:
            if model.task is None:
                continue
            tensors = {name: reader.read(model.checkpoint.tensors[name])
                       for name in plan.head_tensors if name in model.checkpoint.tensors}
            save_file(tensors, str(folder / f"{model.task}.safetensors"),
                      metadata={"model": model.label})
    finally:
        reader.close()

