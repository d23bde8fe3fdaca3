"""Runs the prefkit CLI in a child process and stops it at a chosen point, for the process tests.

Children are forked from a multiprocessing fork server that has imported torch and prefkit once
(this module imports them), so each crash costs a fork, not a Python start-up. The server never
runs a tensor operation, so forking it is safe.

Points: `plan` (before the first byte is written), `tensor` (after the N-th tensor is written),
`side_files` (all shards written, before config/recipe/provenance), `rename` (the folder is
complete, before it is moved into place), `swap` (with --force: the old output moved aside, the
new one not yet in place), `cleanup` (the new output in place, the old one not yet deleted),
`none` (run to the end, or until the parent kills it).

At the point the child sends itself `signal` (KILL, INT, TERM, HUP), or with `PAUSE` writes the
file `paused` in its working directory and waits there until the test creates `resume` (what
another process does meanwhile: a second run, a file appearing at the output).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefkit import cli
from prefkit.engine import executor
from prefkit.io import interrupts, outdir, writer

ENV = {"PREFKIT_LOAD_PLUGINS": "linear,task_arithmetic,ties", "HF_HUB_OFFLINE": "1"}


@dataclass(frozen=True)
class Crash:
    point: str  # see the module docstring
    signal: str = "KILL"  # KILL (no cleanup can run), INT (Ctrl-C), TERM, HUP or PAUSE
    count: int = 0  # for `tensor`: stop after this many tensors
    args: tuple[str, ...] = ()  # CLI arguments
    file_size_limit: int | None = None  # RLIMIT_FSIZE in bytes: a disk that fills up
    env: dict[str, str] = field(default_factory=dict)


def context():
    ctx = multiprocessing.get_context("forkserver")
    # The server does not get the test's sys.path (Python 3.11 ignores it), so preload what is
    # importable from site-packages: the heavy part, torch and prefkit.
    ctx.set_forkserver_preload(["torch", "prefkit.cli", "prefkit.engine.executor", "prefkit.recipe.resolve",
                                "prefkit.batch", "prefkit.plugins.ties"])
    return ctx


def start(crash: Crash, cwd: Path, log: Path):
    """Start the child; its stdout and stderr go to `log`.out / `log`.err."""
    process = context().Process(target=_child, args=(crash, str(cwd), str(log)))
    process.start()
    return process


def _child(crash: Crash, cwd: str, log: str) -> None:
    os.chdir(cwd)
    for stream, suffix in ((1, ".out"), (2, ".err")):
        fd = os.open(log + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, stream)
        os.close(fd)
    os.environ.update({**ENV, **crash.env})
    # What Ctrl-C at a terminal meets: Python's KeyboardInterrupt. A test run started as a
    # background job of a non-interactive shell (`cmd &`) inherits SIGINT ignored, which Python
    # then keeps ignoring.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    if crash.file_size_limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (crash.file_size_limit,) * 2)
    _install(crash)
    cli.main(list(crash.args))


def _pause() -> None:
    Path("paused.tmp").write_text(f"{os.getpid()}\n")  # whole, then renamed: the test polls it
    os.replace("paused.tmp", "paused")
    for _ in range(6000):
        if Path("resume").exists():
            return
        time.sleep(0.01)
    raise SystemExit("the test never resumed the child")


def _install(crash: Crash) -> None:
    sig = None if crash.signal == "PAUSE" else getattr(signal, f"SIG{crash.signal}")

    def stop() -> None:
        if sig is None:
            return _pause()
        os.kill(os.getpid(), sig)  # SIGKILL ends us here; INT/TERM/HUP raise KeyboardInterrupt
        for _ in range(3000):  # ... while we wait here, unless the step defers it to its end
            if interrupts._State.pending == sig:
                return None
            time.sleep(0.01)
        raise SystemExit("the signal was not delivered")

    def after(function, calls: int):
        seen = [0]

        def wrapped(*a, **k):
            result = function(*a, **k)
            seen[0] += 1
            if seen[0] == calls:
                stop()
            return result
        return wrapped

    def before(function):
        def wrapped(*a, **k):
            stop()
            return function(*a, **k)
        return wrapped

    if crash.point == "plan":
        executor.execute = before(executor.execute)
    elif crash.point == "tensor":
        writer.ShardWriter.write = after(writer.ShardWriter.write, crash.count)
    elif crash.point == "side_files":
        executor._write_side_files = before(executor._write_side_files)
    elif crash.point == "rename":
        executor.replace_folder = before(executor.replace_folder)
    elif crash.point in ("swap", "cleanup"):  # rename 1: old output aside; rename 2: new one in
        outdir.rename_noreplace = after(outdir.rename_noreplace, 1 if crash.point == "swap" else 2)
    elif crash.point != "none":
        raise ValueError(f"unknown crash point {crash.point!r}")
