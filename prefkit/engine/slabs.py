"""Slabs: how the executor reads tensor groups in constant memory.

A *slab* is what the executor reads, merges and writes in one step: rows [start, stop) of one
output tensor, from every input model and the base. A group that fits the memory budget is one
slab (the whole tensor). A larger group of a method that declares itself `elementwise` (e.g. a
50265×768 embedding: 154 MB per fp32 model) is cut along its first dimension: consecutive rows
are consecutive bytes of the file, so each input's slab is one positioned read.

For such methods, slabs are read into reused buffers: two sets, taken in turn, so the next slab is
read while this one is merged, and no buffer is allocated (and its pages faulted in) per tensor.
Peak memory is then about two slabs, whatever the size of the models. Other methods keep what the
API promised them: fresh whole tensors for every call. Reads and writes run on background
threads (`SlabIO`), so the arithmetic on the main thread overlaps both.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prefkit.api import MergeInfo, SlabRows
from prefkit.engine.memory import HeapTrimmer
from prefkit.engine.tensorlike import address
from prefkit.errors import MergeError
from prefkit.io.checkpoint import TensorMeta, TensorReader
from prefkit.io.dtypes import ITEMSIZE
from prefkit.io.jsonfile import size_text
from prefkit.recipe.plan import TensorPlan

# Bytes of one slab's inputs in the compute dtype. Two slabs are in flight (one merged, one
# read), so the buffers hold about twice this; the FFN matrices of a roberta-base merge of four
# models (5 × 9.4 MB) still fit whole, the embedding is cut in slabs of ~2000 rows.
# PREFKIT_SLAB_BYTES overrides it (less memory, or more slabs to test with).
DEFAULT_BUDGET = int(os.environ.get("PREFKIT_SLAB_BYTES", 48 * 2**20))
# Rows up to this size are merged whatever the budget (one row per slab); a larger row than both
# is refused: a slab cannot be less than a row, and a hostile header can claim a row of terabytes.
ROW_FLOOR = 48 * 2**20
RESULT_RING = 2  # buffers that take turns holding results on their way to disk
SMALL_SLAB = 1 << 20  # a slab of fewer bytes is read ahead with the ones that follow it
LOOKAHEAD = 8  # slabs read ahead at most


@dataclass(frozen=True, eq=False)
class Slab:
    """Rows `rows` = (start, stop) of `plan`'s tensor (None: the whole tensor), the `index`-th
    of the tensor's `count` slabs."""

    plan: TensorPlan
    rows: tuple[int, int] | None
    index: int = 0
    count: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        if self.rows is None:
            return self.plan.shape
        return (self.rows[1] - self.rows[0], *self.plan.shape[1:])

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def info(self, state: Any = None, tensor_state: Any = None) -> MergeInfo:
        slab = None if self.rows is None else SlabRows(self.rows, tensor_state)
        return MergeInfo(self.plan.info, state, slab)


def group_bytes(plan: TensorPlan, inputs: int, rows: int | None = None) -> int:
    """Bytes of `inputs` tensors of the plan's shape (or `rows` of its rows) in the compute dtype."""
    numel = math.prod(plan.shape[1:]) * rows if rows is not None else math.prod(plan.shape)
    return numel * ITEMSIZE[plan.compute_dtype] * inputs


def slabs_of(plan: TensorPlan, inputs: int, budget: int, split: bool) -> list[Slab]:
    """The tensor as one slab, or, when `split` and its `inputs` tensors outgrow `budget`, as
    the fewest slabs of (nearly) equal row counts that fit.

    A slab holds at least one row: a row larger than the budget is refused (before anything is
    read) unless it is within ROW_FLOOR, so that a tiny budget still merges in one-row slabs.
    """
    rows = plan.shape[0] if plan.shape else 0
    if not split or plan.copy or group_bytes(plan, inputs) <= budget:
        return [Slab(plan, None)]
    row = group_bytes(plan, inputs, rows=1) if rows else group_bytes(plan, inputs)
    if row > max(budget, ROW_FLOOR):
        raise _oversized_row(plan, inputs, row, max(budget, ROW_FLOOR))
    if rows < 2:
        return [Slab(plan, None)]
    per_slab = max(1, budget // group_bytes(plan, inputs, rows=1))
    count = math.ceil(rows / per_slab)
    step = math.ceil(rows / count)
    starts = range(0, rows, step)
    return [Slab(plan, (a, min(a + step, rows)), i, len(starts)) for i, a in enumerate(starts)]


def _oversized_row(plan: TensorPlan, inputs: int, row: int, limit: int) -> MergeError:
    return MergeError(
        f"tensor {plan.name!r} ({plan.compute_dtype}, shape {list(plan.shape)}): one row of its "
        f"{inputs} input(s) is {size_text(row)}, more than the memory budget of "
        f"{size_text(limit)}", hint=f"set PREFKIT_SLAB_BYTES={row} (or more) to merge it in "
        "one-row slabs, which needs about twice that much memory")


def check_device(device: str) -> None:
    """Raise a one-line error unless the arithmetic can run on `device` here."""
    if device == "cpu":
        return
    import torch

    if device.split(":")[0] == "cuda" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        if index < torch.cuda.device_count():
            return
        raise MergeError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)", hint="pick one of them, or run with --device cpu")
    build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
    raise MergeError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                     f"{build}, no GPU visible)", hint="run with --device cpu (the default)")


class BufferPool:
    """Byte buffers kept from slab to slab, by key; each grows to the largest size asked of it.
    `pin`: page-locked host memory, so copies to a GPU run at full speed. `numpy`: numpy
    buffers (torch is not imported), else torch tensors."""

    def __init__(self, pin: bool = False, numpy: bool = False):
        self.pin, self.numpy = pin, numpy
        self._buffers: dict[Any, Any] = {}
        self._writing: dict[Any, Any] = {}  # key -> the queued write of the bytes it holds

    def take(self, key: Any, nbytes: int):
        job = self._writing.pop(key, None)
        if job is not None:
            job.exception()  # its bytes are still on their way to disk: wait (errors: writer's)
        buffer = self._buffers.get(key)
        if buffer is None or len(buffer) < nbytes:
            self._buffers.pop(key, None)  # free the smaller one first
            buffer = self._allocate(nbytes)
            self._buffers[key] = buffer
        return buffer[:nbytes]

    def _allocate(self, nbytes: int):
        if self.numpy:
            import numpy as np

            return np.empty(nbytes, np.uint8)
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    def hold(self, tensor, job) -> None:
        """Keep the buffer that holds `tensor` (if one does) from being read into again until
        `job`, the write of its bytes, is done."""
        if not self.numpy and tensor.device.type != "cpu":
            return
        pointer = address(tensor)
        for key, buffer in self._buffers.items():
            if address(buffer) <= pointer < address(buffer) + len(buffer):
                self._writing[key] = job
                return

    def tensor(self, key: Any, dtype: str, shape: tuple[int, ...]):
        """A `dtype` tensor (or numpy array) of `shape` in the buffer `key`."""
        buffer = self.take(key, math.prod(shape) * ITEMSIZE[dtype])
        if self.numpy:
            from prefkit.io import arrays

            return arrays.view(buffer, dtype, shape)
        import torch

        return buffer.view(getattr(torch, dtype)).view(shape)


class SlabLoader:
    """Reads a slab: inputs and base in the compute dtype, heads zero-padded, on `device`.

    `uses_base`: the method takes a base (a tensor the base lacks, e.g. a classifier head, is
    then zeros); otherwise the base is not read at all. `pooled`: read into reused buffers
    (`slot` 0 or 1 picks the set), else into fresh ones. `io_threads`: inputs read in parallel.
    """

    def __init__(self, uses_base: bool, *, allow_nonfinite: bool = False, pooled: bool = False,
                 device: str = "cpu", io_threads: int = 1, numpy: bool = False):
        self.reader = TensorReader(check_finite=not allow_nonfinite)
        self.uses_base, self.pooled, self.device, self.numpy = uses_base, pooled, device, numpy
        self.pool = BufferPool(pin=device != "cpu", numpy=numpy) if pooled else None
        self._io = ThreadPoolExecutor(io_threads, "prefkit-io") if io_threads > 1 else None
        self._turns, self._out_turns = itertools.count(), itertools.count()

    def load(self, slab: Slab, slot: tuple = ("large", 0)):
        """(tensors, base) of the slab into the buffer set `slot` (see `SlabIO`); a copied
        (non-float) tensor comes back as ([tensor], None)."""
        plan = slab.plan
        if plan.copy:
            read = self.reader.read_array if self.numpy else self.reader.read
            return [read(plan.base or plan.sources[0])], None
        metas = list(plan.sources) + ([plan.base] if self.uses_base else [])
        # Methods write their result over the first input: its buffers take turns in a ring,
        # so a few results can wait to be written (writes are the slowest step) while reading
        # goes on; the other inputs' buffers are free again as soon as the merge returns.
        first = ("first", next(self._turns) % RESULT_RING) if slot[0] == "large" else (slot, 0)
        jobs = [(meta, slab, (slot, k) if k else first) for k, meta in enumerate(metas)][::-1]
        tensors = list(self._io.map(self._read, *zip(*jobs)) if self._io else
                       (self._read(*job) for job in jobs))[::-1]
        if self.device != "cpu":
            tensors = [t.to(self.device, non_blocking=True) for t in tensors]
        if self.uses_base:
            return tensors[:-1], tensors[-1]
        return tensors, None

    def _read(self, meta: TensorMeta | None, slab: Slab, key: Any):
        if self.numpy:
            return self._read_numpy(meta, slab, key)
        import torch

        plan, shape = slab.plan, slab.shape
        dtype = plan.compute_dtype
        if meta is None:  # a head this model lacks: zeros
            if self.pool is None:
                return torch.zeros(shape, dtype=getattr(torch, dtype))
            return self.pool.tensor(key, dtype, shape).zero_()
        if meta.shape == plan.shape and meta.dtype == dtype:  # straight into the buffer
            out = self.pool.take(key, math.prod(shape) * ITEMSIZE[dtype]) if self.pool else None
            return self.reader.read(meta, slab.rows, out=out)
        raw = self._read_raw(meta, _source_rows(meta, plan, slab.rows), key)
        if self.pool is None and raw.shape == shape:
            return raw.to(getattr(torch, dtype))
        out = self.pool.tensor(key, dtype, shape) if self.pool else torch.empty(
            shape, dtype=getattr(torch, dtype))
        if raw.shape != shape:
            out.zero_()  # the source's rows and columns go top-left; the rest stays zero
            out[tuple(slice(0, d) for d in raw.shape)].copy_(raw)
        else:
            out.copy_(raw)
        return out

    def _read_numpy(self, meta: TensorMeta | None, slab: Slab, key: Any):
        """`_read` into numpy arrays: the same steps, converted by `prefkit.io.arrays`."""
        from prefkit.io import arrays

        plan, shape = slab.plan, slab.shape
        dtype = plan.compute_dtype
        if meta is not None and meta.shape == plan.shape and meta.dtype == dtype:  # straight in
            buffer = self.pool.take(key, math.prod(shape) * ITEMSIZE[dtype]) if self.pool else None
            return self.reader.read_array(meta, slab.rows, out=buffer)
        out = self.pool.tensor(key, dtype, shape) if self.pool else arrays.empty(dtype, shape)
        if meta is None:  # a head this model lacks: zeros
            out[...] = 0
            return out
        raw = self._read_raw(meta, _source_rows(meta, plan, slab.rows), key)
        if raw.shape != shape:
            out[...] = 0  # the source's rows and columns go top-left; the rest stays zero
            arrays.convert(raw, meta.dtype, out[tuple(slice(0, d) for d in raw.shape)], dtype)
        else:
            arrays.convert(raw, meta.dtype, out, dtype)
        return out

    def _read_raw(self, meta: TensorMeta, rows: tuple[int, int] | None, key: Any):
        read = self.reader.read_array if self.numpy else self.reader.read
        if self.pool is None:
            return read(meta, rows)
        count = meta.shape[0] if rows is None or not meta.shape else rows[1] - rows[0]
        nbytes = (meta.nbytes // meta.shape[0] * count) if meta.shape and meta.shape[0] else meta.nbytes
        return read(meta, rows, out=self.pool.take((*key, "raw"), nbytes))

    def hold(self, tensor, job) -> None:
        """`tensor` is being written by `job`: its buffer is not read into until then."""
        if self.pool is not None:
            self.pool.hold(tensor, job)

    def output(self, result, dtype: str):
        """The merged slab in the output dtype, on the host, ready to write."""
        if self.numpy:
            return self._output_numpy(result, dtype)
        import torch

        if str(result.dtype) == f"torch.{dtype}" and result.device.type == "cpu":
            return result
        if self.pool is None:
            return result.to(device="cpu", dtype=getattr(torch, dtype))
        key = ("out", next(self._out_turns) % RESULT_RING)
        return self.pool.tensor(key, dtype, tuple(result.shape)).copy_(result)

    def _output_numpy(self, result, dtype: str):
        from prefkit.io import arrays

        if result.dtype == arrays.STORAGE[dtype]:
            return result
        source = result.dtype.name
        if self.pool is None:
            return arrays.convert(result, source, arrays.empty(dtype, result.shape), dtype)
        key = ("out", next(self._out_turns) % RESULT_RING)
        return arrays.convert(result, source, self.pool.tensor(key, dtype, result.shape), dtype)

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown()
        self.reader.close()


def _source_rows(meta: TensorMeta, plan: TensorPlan, rows: tuple[int, int] | None):
    """The rows to read of a source whose shape may be smaller than the plan's (a padded head)."""
    if rows is not None and meta.shape != plan.shape:
        return min(rows[0], meta.shape[0]), min(rows[1], meta.shape[0])
    return rows


class SlabIO:
    """Two background threads: one reads slabs ahead, one writes results behind.

    `get(slab, then)` returns `slab`'s (tensors, base), read ahead when an earlier call listed
    it in `then`, and starts reading what follows (`then`, in order): every small slab up to
    and including the next large one, so that the read of a large tensor that follows a run of
    small ones (LayerNorm weights, biases) starts early. Large slabs take turns in two buffer
    sets, small ones in a ring of small sets. `submit` queues a file operation of the writer (in
    order, on the writing thread; `last_write` is the last one): the caller hands it to
    `SlabLoader.hold`, so that a buffer whose bytes are still being written is read into only
    after. The caller must be done with the previous slab's tensors when it calls `get`.
    `size(slab)` is a slab's bytes; `overlap(a, b)` says whether two slabs may be in memory
    together (a huge unsplit tensor is read alone).
    """

    def __init__(self, load, size=lambda slab: 0, overlap=lambda a, b: True):
        self._load, self._size, self._overlap = load, size, overlap
        self._reader = ThreadPoolExecutor(1, "prefkit-read")
        self._writer = ThreadPoolExecutor(1, "prefkit-write")
        self._pending: dict[int, tuple[Slab, tuple, Any]] = {}  # id(slab) -> (slab, set, read)
        self._in_use: set[tuple] = set()  # the sets of pending reads and of the slab returned
        self._turns = itertools.count()
        self.last_write = None  # the writer's last queued operation
        self._heap = HeapTrimmer()  # the free pages of the buffers freed meanwhile go back

    def get(self, slab: Slab, then: Sequence[Slab] = ()):
        entry = self._pending.pop(id(slab), None)
        if entry is None:  # not read ahead: whatever was is of no use now
            self._drop_pending()
            entry = (slab, *self._start(slab))
        _, slot, read = entry
        self._heap.note(self._size(slab))
        value = read.result()
        self._in_use = {s for _, s, _ in self._pending.values()} | {slot}
        for following in then:
            if len(self._pending) >= LOOKAHEAD or not self._overlap(slab, following):
                break
            if id(following) not in self._pending:
                started = self._start(following)
                if started is None:  # both large sets busy
                    break
                self._pending[id(following)] = (following, *started)
            if self._size(following) > SMALL_SLAB:
                break
        return value

    def _start(self, slab: Slab) -> tuple[tuple, Any] | None:
        """Start reading `slab` into a free buffer set (None: none is free)."""
        kind, sets = ("large", 2) if self._size(slab) > SMALL_SLAB else ("small", LOOKAHEAD + 2)
        for _ in range(sets):
            slot = (kind, next(self._turns) % sets)
            if slot not in self._in_use:
                self._in_use.add(slot)
                return slot, self._reader.submit(self._load, slab, slot)
        return None

    def _drop_pending(self) -> None:
        for _, _, read in self._pending.values():
            read.exception()  # wait for it; its buffers are then free
        self._pending.clear()
        self._in_use.clear()

    def submit(self, fn, *args):
        self.last_write = self._writer.submit(fn, *args)
        return self.last_write

    def close(self) -> None:
        self._drop_pending()
        self._reader.shutdown()
        self._writer.shutdown()
