"""Where sweep points run: in this process (`--workers 0`, for debugging), a local process pool
(the default), or Ray (`--executor ray`, extra `prefkit[ray]`). Each yields result records as
points finish; a point that fails, or whose worker dies, yields a failed record and the others
go on. Every executor runs the same `run_point`, so results and the cache are the same. A worker
process (and the in-process loop, for one sweep) keeps its evaluation state between points
(`prefkit.sweeps.worker`): tokenizer, tokenized examples, model skeleton."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.sweeps.point import PointJob, failed, run_point

log = logging.getLogger(__name__)


def torch_threads(workers: int) -> int:
    """Share the cores between concurrent points instead of oversubscribing them."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_jobs(jobs: list[PointJob], *, executor: str, workers: int, registry) -> Iterator[dict[str, Any]]:
    if not jobs:
        return
    if executor == "ray":
        yield from _ray(jobs, workers)
    elif workers == 0:
        from prefkit.sweeps.worker import keeping

        with keeping() as session:
            for job in jobs:
                yield run_point(job, registry, session)
    else:
        yield from _pool(jobs, workers)


def run_kept(job: PointJob) -> dict[str, Any]:
    """`run_point` in a worker process, with the state that process keeps between points."""
    from prefkit.sweeps.worker import keep_for_process

    return run_point(job, session=keep_for_process())


def _pool(jobs: list[PointJob], workers: int) -> Iterator[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child of a process that has used torch's thread pools can hang
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(run_kept, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # the worker process died (out of memory, a crash)
                yield failed(futures[future], f"worker process failed: {type(exc).__name__}: {exc}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray(jobs: list[PointJob], workers: int) -> Iterator[dict[str, Any]]:
    """Runs on the Ray cluster this process is connected to; else on RAY_ADDRESS; else starts a
    local one for the sweep. At most `workers` points run at once."""
    try:
        import ray
    except ImportError as exc:
        raise PrefkitError("--executor ray needs Ray", hint="pip install 'prefkit[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_kept)
    queue, pending = list(jobs), {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                job = queue.pop(0)
                pending[remote.remote(job)] = job
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the task's worker died
                    yield failed(job, f"Ray task failed: {type(exc).__name__}: {exc}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
