"""The streaming executor: a slab of one tensor group in memory at a time, output straight to disk.

For each planned tensor: read its inputs (cast to the compute dtype, heads zero-padded), call the
method's `merge`, cast to the output dtype and append to the open shard. A method that declares
itself `elementwise` gets large tensors in slabs of rows and reused buffers (`prefkit.engine.slabs`), so
memory stays constant as models grow. The next slab is read on a background thread while the
current one is merged. Output goes to a temporary sibling folder that is renamed into place only
when complete, so a failure leaves nothing behind. The run holds the output's lock throughout
(`prefkit.io.outdir.claim_output`), and the final rename replaces nothing it was not agreed to.

Every merged slab is checked finite before it is written (one pass over it): a merge that turns
finite inputs into NaN/Inf (a weight or lambda whose product overflows the dtype) fails, naming
the tensor and the parameters that scale it.

A method that takes numpy arrays (`TensorMethod.takes_numpy`: linear, task arithmetic, float32
TIES) merges them on the CPU (`numpy_merge`), and the whole merge then runs without importing
torch, which takes longer than a linear merge itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prefkit.api import MergeInfo, ScanItem
from prefkit.engine.slabs import (
    DEFAULT_BUDGET,
    LOOKAHEAD,
    Slab,
    SlabIO,
    SlabLoader,
    check_device,
    group_bytes,
    slabs_of,
)
from prefkit.engine.threads import merge_threads
from prefkit.errors import MergeError, OutputError, PrefkitError
from prefkit.io import arrays
from prefkit.io.checkpoint import TensorReader, is_pickle
from prefkit.io.finite import check_result
from prefkit.io.hub import TOKENIZER_FILES
from prefkit.io.interrupts import deferred
from prefkit.io.outdir import KEPT, Identity, claim_output, replace_folder, temp_sibling, write_error
from prefkit.io.ownership import OutputAppeared
from prefkit.io.writer import MemorySink, OutTensor, ShardWriter, plan_shards
from prefkit.progress import NullReporter, Reporter
from prefkit.recipe.plan import Plan, fingerprint
from prefkit.version import __version__

DEFAULT_SHARD_BYTES = 5 * 1000**3


@dataclass(frozen=True)
class MergeResult:
    output: Path
    tensors: int
    bytes_written: int
    seconds: float


@dataclass(frozen=True)
class ExecuteOptions:
    """How `execute` runs a Plan.

    `force` replaces an existing output. An input tensor holding NaN/Inf is an error unless
    `allow_nonfinite`. `threads` (None: all cores): the merge's threads, and how many inputs are
    read at once; an `elementwise` method's chunks are spread over them (torch's own threads set
    to 1 meanwhile), another method gets them as torch's intra-op threads. Outputs do not depend
    on it. `device`: where the arithmetic runs ("cpu", or "cuda" with pinned host buffers).

    What trainer and solver methods hand over: `weights` (tensor name → tensor, e.g. a trained
    model) are written instead of merged, `task_heads` (task → head tensors) for `heads:
    per_task`; a solver's learned `state` reaches `merge` as `info.state` (`prepare` is not
    called); `files` (name → text) are written into the output; `provenance` is merged into
    prefkit.json.
    """

    force: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    allow_nonfinite: bool = False
    threads: int | None = None
    device: str = "cpu"
    weights: Any = None
    task_heads: Any = None
    state: Any = None
    files: dict[str, str] | None = None
    provenance: dict[str, Any] | None = None


def execute(plan: Plan, options: ExecuteOptions | None = None, *,
            reporter: Reporter | None = None) -> MergeResult:
    """Run a Plan and write its output folder (see ExecuteOptions).

    Raises:
        OutputError: the output exists and `force` is false, another run holds it, something
            appeared there meanwhile (the result is kept: `OutputAppeared`), or it cannot be
            written (disk full).
        MergeError / CheckpointError: a method or an input failed, or the merge gave NaN/Inf
            from finite inputs; nothing is left behind.
    """
    o = options or ExecuteOptions()
    check_device(o.device)
    reporter = reporter or NullReporter()
    try:
        with claim_output(plan.output, o.force, reporter.note) as agreed:
            return _execute(plan, o, reporter, agreed)
    finally:
        reporter.finish()


def merge_in_memory(plan: Plan, options: ExecuteOptions | None = None, *,
                    reporter: Reporter | None = None) -> dict[str, Any]:
    """The Plan's merged tensors (name → torch tensor, the values `execute` would write), with
    no output folder: nothing is claimed, written or read back. Sweeps score unkept merges so."""
    o, reporter = options or ExecuteOptions(), reporter or NullReporter()
    check_device(o.device)
    sink = MemorySink([OutTensor(p.name, p.out_dtype, p.shape) for p in plan.tensors])
    try:
        _write_tensors(plan, None, reporter, o.max_shard_bytes, o.weights, o.allow_nonfinite,
                       o.state, o.threads, o.device,
                       o.weights is None and o.device == "cpu" and numpy_merge(plan), sink)
    finally:
        reporter.finish()
    return sink.tensors


def _execute(plan: Plan, o: ExecuteOptions, reporter: Reporter, agreed: Identity | None) -> MergeResult:
    """`execute` once the output is ours: write the temporary sibling, then move it into place."""
    out, weights, device = plan.output, o.weights, o.device
    tmp = temp_sibling(out)
    if (tmp / KEPT).exists():
        raise OutputError(f"output {out}: a result kept by an earlier run of this process is at "
                          f"{tmp}", hint="move it, then run again")
    numpy = weights is None and device == "cpu" and numpy_merge(plan)
    if not numpy:
        import torch  # noqa: F401  (here, not on the clock: its import is start-up, not merging)
    started = time.perf_counter()
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        total = _write_tensors(plan, tmp, reporter, o.max_shard_bytes, weights, o.allow_nonfinite,
                               o.state, o.threads, device, numpy)
        seconds = time.perf_counter() - started
        _write_side_files(plan, tmp, seconds, o.task_heads, o.provenance)
        for name, text in (o.files or {}).items():
            (tmp / name).write_text(text)
        replace_folder(tmp, out, agreed)
    except OutputAppeared:  # the new result stays where it is, reported
        raise
    except OSError as exc:  # reading errors are CheckpointErrors: this is the output side
        _discard(tmp)
        raise write_error(out, exc) from exc
    except BaseException:
        _discard(tmp)
        raise
    return MergeResult(out, len(plan.tensors), total, seconds)


def _discard(tmp: Path) -> None:
    with deferred():  # removed whole, even if SIGTERM comes meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tensors(plan: Plan, folder: Path | None, reporter: Reporter, max_shard_bytes: int,
                   weights=None, allow_nonfinite: bool = False, state=None, threads=None,
                   device: str = "cpu", numpy: bool = False, sink: MemorySink | None = None) -> int:
    method = plan.method.method
    uses_base = plan.base is not None and method.base == "required"
    inputs = len(plan.inputs) + uses_base
    split = weights is None and getattr(method, "elementwise", False)
    threads = threads or all_cores()
    loader = SlabLoader(uses_base, allow_nonfinite=allow_nonfinite, pooled=split, device=device,
                        io_threads=min(threads, inputs), numpy=numpy)
    units = [s for tp in plan.tensors for s in slabs_of(tp, inputs, DEFAULT_BUDGET, split)]
    # Reading the next slab overlaps merging this one, unless the two together would outgrow
    # both two slab budgets and the largest single group (an unsplit tensor is read alone).
    limit = max([2 * DEFAULT_BUDGET, *(group_bytes(u.plan, inputs, _rows(u)) for u in units)])

    def size(slab: Slab) -> int:
        return group_bytes(slab.plan, inputs, _rows(slab))

    io = SlabIO(_Given(weights, loader).load if weights is not None else loader.load, size,
                lambda a, b: size(a) + size(b) <= limit)
    outs = [OutTensor(p.name, p.out_dtype, p.shape) for p in plan.tensors]
    writer = sink or ShardWriter(folder, plan_shards(outs, max_shard_bytes), {
        "format": "pt", "prefkit_version": __version__,
        "recipe_sha256": plan.source.digest,
    }, submit=io.submit)
    total = sum(o.nbytes for o in outs)
    try:
        # elementwise methods: chunks spread over the threads; others: torch's own threads
        with merge_threads(threads, chunked=split, uses_torch=not numpy):
            if weights is None and state is None:
                state = method.prepare(lambda: _scan(plan, units, io, None), plan.shared_params)
            reporter.start(len(outs), total, f"{method.name} → {plan.output}")
            _merge_units(plan, units, io, writer, loader, reporter, state, weights is not None,
                         numpy)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        io.close()
        loader.close()
    return total


def _merge_units(plan: Plan, units: list[Slab], io: SlabIO, writer: ShardWriter,
                 loader: SlabLoader, reporter: Reporter, state, given: bool,
                 numpy: bool = False) -> None:
    """Read, merge and write every slab in order (the per-tensor pre-pass before a split one)."""
    tensor_state = None
    for i, slab in enumerate(units):
        tp = slab.plan
        if slab.count > 1 and slab.index == 0:
            tensor_state = _prepare_tensor(plan, units[i:i + slab.count], io, state)
        tensors, base = io.get(slab, units[i + 1:i + 1 + LOOKAHEAD])
        if tp.copy or given:
            result = tensors[0]
        else:
            result = _merge_one(plan, slab, tensors, base, slab.info(state, tensor_state), numpy)
        written = loader.output(result, tp.out_dtype)
        if not (tp.copy or given):
            check_result(tp, plan.preference, written, numpy, loader.reader.check_finite,
                         None if slab.count == 1 else slab.rows)
        writer.write(tp.name, written, tp.out_dtype if numpy else None)
        loader.hold(written, io.last_write)  # its buffer is not read into before it is written
        del tensors, base, result, written
        if slab.last:
            reporter.advance(tp.name, OutTensor(tp.name, tp.out_dtype, tp.shape).nbytes)
            tensor_state = None


def numpy_merge(plan: Plan) -> bool:
    """Whether the plan's merge runs on numpy arrays, without torch: the method takes them
    (`TensorMethod.takes_numpy`), every input is a safetensors file, and every merged tensor is
    computed in a dtype numpy has and the method takes (`numpy_dtypes`; bfloat16 is only read
    and written: `prefkit.io.arrays`)."""
    method = plan.method.method
    if not getattr(method, "takes_numpy", False):
        return False
    computable = arrays.COMPUTABLE & getattr(method, "numpy_dtypes", arrays.COMPUTABLE)
    for tp in plan.tensors:
        metas = [m for m in (*tp.sources, tp.base) if m is not None]
        if any(is_pickle(m.file) for m in metas):
            return False
        if not tp.copy and not (tp.compute_dtype in computable
                                and tp.out_dtype in arrays.CONVERTIBLE
                                and all(m.dtype in arrays.CONVERTIBLE for m in metas)):
            return False
    return True


def all_cores() -> int:
    """The cores this process may run on (the default of `--threads`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _rows(slab: Slab) -> int | None:
    return None if slab.rows is None else slab.rows[1] - slab.rows[0]


class _Given:
    """Serves given tensors (a trained model) in place of reading and merging inputs."""

    def __init__(self, weights, loader: SlabLoader):
        self.weights, self._copy = weights, loader

    def load(self, slab: Slab, slot: int = 0):
        plan = slab.plan
        if plan.copy:
            return self._copy.load(slab, slot)
        if plan.name not in self.weights:
            raise MergeError(f"no value was given for tensor {plan.name!r}")
        value = self.weights[plan.name]
        if tuple(value.shape) != plan.shape:
            raise MergeError(f"tensor {plan.name!r} has shape {list(value.shape)}, "
                             f"expected {list(plan.shape)}")
        return [value], None


def _merge_one(plan: Plan, slab: Slab, tensors, base, info: MergeInfo, numpy: bool = False):
    method = plan.method.method
    tp = slab.plan
    try:
        with arrays.quiet() if numpy else contextlib.nullcontext():  # torch warns of no overflow
            result = method.merge(tensors, base=base, params=tp.params,
                                  model_params=tp.model_params, info=info)
    except PrefkitError:
        raise
    except Exception as exc:
        raise MergeError(
            f"method {method.name!r} (plugin {plan.method.plugin!r}) failed on tensor "
            f"{tp.name!r}: {type(exc).__name__}: {exc}",
            hint="run with --traceback for details; report it to the plugin's authors",
        ) from exc
    if tuple(result.shape) != slab.shape:
        raise MergeError(f"method {method.name!r} returned shape {list(result.shape)} for tensor "
                         f"{tp.name!r}, expected {list(slab.shape)}")
    return result


def _prepare_tensor(plan: Plan, slabs: list[Slab], io: SlabIO, state):
    """The method's per-tensor pre-pass over a tensor merged in slabs (TIES per-tensor top-k)."""
    tp = slabs[0].plan
    return plan.method.method.prepare_tensor(
        lambda: _scan(plan, slabs, io, state, then=slabs[0]), params=tp.params,
        model_params=tp.model_params, info=MergeInfo(tp.info, state))


def _scan(plan: Plan, units: list[Slab], io: SlabIO, state, then: Slab | None = None):
    """Yield every mergeable slab of `units` for a method's pre-pass, re-reading the inputs; the
    read after the last one is `then` (default: the first unit, which comes next)."""
    mergeable = [u for u in units if not u.plan.copy]
    after = then or (mergeable[0] if mergeable else None)
    left = sum(math.prod(u.shape) for u in mergeable)
    for i, slab in enumerate(mergeable):
        following = mergeable[i + 1:i + 1 + LOOKAHEAD]
        tensors, base = io.get(slab, following or ([after] if after is not None else []))
        left -= math.prod(slab.shape)
        yield ScanItem(slab.info(state), tensors, base, slab.plan.model_params, left)


def _write_side_files(plan: Plan, folder: Path, seconds: float, task_heads=None,
                      extra=None) -> None:
    if plan.out_config is not None:
        (folder / "config.json").write_text(json.dumps(plan.out_config, indent=2, sort_keys=True) + "\n")
    if plan.tokenizer_source is not None:
        for pattern in TOKENIZER_FILES:
            for file in sorted(plan.tokenizer_source.glob(pattern)):
                shutil.copyfile(file, folder / file.name)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(plan.source.data, sort_keys=False))
    models = [m for m in (plan.base, *plan.inputs) if m is not None]
    provenance = {
        "prefkit_version": __version__,
        "method": plan.method.method.name,
        "plugin": plan.method.plugin,
        "recipe": str(plan.source.path),
        "recipe_sha256": plan.source.digest,
        "plan_sha256": plan.digest,
        "inputs": [{"model": m.label, "path": str(m.path), "task": m.task,
                    "fingerprint": fingerprint(m.checkpoint),
                    "role": "base" if m is plan.base else "model",
                    "id2label": (m.checkpoint.config or {}).get("id2label"),
                    "labels": list(m.labels) if m.labels else None} for m in models],
        "heads": plan.heads,
        "head_tensors": plan.head_tensors,
        "preference": list(plan.preference.given) if plan.preference else None,
        "notes": list(plan.notes),
        "timings": {"merge_seconds": round(seconds, 3)},
        **(extra or {}),
    }
    (folder / "prefkit.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if task_heads is not None:
        _save_task_heads(task_heads, folder / "heads")
    elif plan.heads == "per_task":
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


def _save_task_heads(task_heads, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    for task, tensors in sorted(task_heads.items()):
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / f"{task}.safetensors"))
