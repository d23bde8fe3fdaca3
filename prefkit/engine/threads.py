"""The merge's threads: an elementwise merge's chunks spread over the cores (`map_chunks`) inside
`merge_threads`, which the executor opens around a merge. Methods reach `map_chunks` and `CHUNK`
through `prefkit.ops`."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lazy_loader

torch = lazy_loader.load("torch")  # a merge on numpy arrays never imports it


CHUNK = 1 << 18  # elements per chunk (1 MiB of float32): amortises Python, stays in cache


def chunks(n: int, size: int = CHUNK):
    """Slices covering range(n) in order, `size` elements each (the last may be shorter)."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# The merge's worker threads (`merge_threads`), for `map_chunks`; None: the calling thread.
_workers: contextvars.ContextVar[ThreadPoolExecutor | None] = contextvars.ContextVar(
    "prefkit_chunk_workers", default=None)


def map_chunks(fn: Callable[[slice], Any], n: int, size: int = CHUNK) -> list[Any]:
    """[fn(part) for part in chunks(n, size)], spread over the merge's threads (`merge_threads`).

    Each chunk runs whole on one thread, so it stays in that core's cache; `fn` must only write
    to its own chunk (results come back in chunk order, so sums of them are deterministic).
    """
    parts = list(chunks(n, size))
    pool = _workers.get()
    if pool is None or len(parts) < 2:
        return [fn(part) for part in parts]
    context = contextvars.copy_context()  # e.g. numpy's error state: as on the calling thread
    return list(pool.map(lambda part: context.copy().run(fn, part), parts))


def worker_count() -> int:
    """How many threads `map_chunks` spreads chunks over here (1 outside `merge_threads`)."""
    pool = _workers.get()
    return pool._max_workers if pool is not None else 1


@contextlib.contextmanager
def merge_threads(n: int, chunked: bool = True, *, uses_torch: bool = True):
    """Within the block, `map_chunks` spreads chunks over `n` threads and torch's own intra-op
    threads are 1: one level of parallelism, as a small elementwise operation split over threads
    costs more in hand-offs than it saves (`chunked` False: torch's threads are `n` instead, for
    methods that merge whole tensors). Torch's setting is restored afterwards. `uses_torch`
    False (a merge on numpy arrays): torch is left alone, and not imported."""
    before = torch.get_num_threads() if uses_torch else None
    if uses_torch:
        torch.set_num_threads(1 if chunked else n)
    pool = ThreadPoolExecutor(n, thread_name_prefix="prefkit-merge") if chunked and n > 1 else None
    token = _workers.set(pool)
    try:
        yield
    finally:
        _workers.reset(token)
        if pool is not None:
            pool.shutdown()
        if uses_torch:
            torch.set_num_threads(before)
