"""Who owns an output while a run writes it, and moving a finished folder into place without
replacing anything that is not ours.

A run holds `.<name>.prefkit-lock` beside its output for the whole run: an exclusive `flock`
(released by the kernel when the process ends, however it ends) on a file that holds the
holder's pid and process start time. A second run for the same output fails at once, naming the
holder. A lock file left by a killed run is not held: the next run takes it over. The holder
removes it at the end.

The final rename is a no-replace rename: Linux's `renameat2(RENAME_NOREPLACE)` (through libc),
so that an output that appeared while the merge ran is never replaced. Where the OS or the file
system has no such call, it falls back to checking that the destination is absent and then
renaming, which leaves a short window in which something created at the destination would be
replaced (an empty folder) or make the rename fail (anything else).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prefkit.errors import OutputError

LOCK = "prefkit-lock"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_held: dict[tuple, list] = {}  # (thread, lock file) → [fd, depth]: re-entrant in one thread


class OutputAppeared(OutputError):
    """The destination of the final rename is not what the run agreed to replace; the new result
    is kept at `kept` (its temporary name) and whatever is at the output is left alone."""

    def __init__(self, message: str, kept: Path, hint: str | None = None):
        super().__init__(message, hint)
        self.kept = kept


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.{LOCK}"


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22), which tells a
    process from a later one given the same pid; None where there is no /proc or no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the name (field 2) may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None


def owner_tag() -> str:
    """`<pid>` plus `-<start time>` where known: the mark of this process in sibling names."""
    start = process_start(os.getpid())
    return f"{os.getpid()}-{start}" if start else str(os.getpid())


def alive(pid: int, start: str | None) -> bool:
    """Whether the process that made a mark `pid[-start]` still runs. Without a start time (no
    /proc: not Linux) a live pid is taken as the same process."""
    if pid == os.getpid():
        return start is None or start == process_start(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    if start is None:
        return True
    now = process_start(pid)
    return now is None or now == start


@contextlib.contextmanager
def hold_output(out: Path, notes: list[str] | None = None) -> Iterator[None]:
    """Hold the output's lock for the block (re-entrant in one thread: a solver holds it while
    learning and the executor again while writing; another thread of this process is refused
    like another process). Creates the output's parent folder.

    Raises:
        OutputError: another live run holds it (names its pid).
    """
    path = lock_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = (threading.get_ident(), str(path.parent.resolve() / path.name))
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(out, path, notes), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd = _held.pop(key)[0]
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)


def _acquire(out: Path, path: Path, notes: list[str] | None) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"output {out} is in use by another prefkit run (pid {holder})",
                              hint="wait for it to finish, or choose another -o") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked may have been removed by its last holder meanwhile: again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = os.pread(fd, 256, 0).decode(errors="replace").split()
        if previous and notes is not None:
            notes.append(f"{out}: took over the lock of an interrupted run (pid {previous[0]})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {process_start(os.getpid()) or '-'}\n".encode(), 0)
        return fd


def _holder(fd: int) -> str:
    """The pid written in a held lock (the holder writes it just after locking: wait a little)."""
    for _ in range(20):
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        if text:
            return text[0]
        time.sleep(0.01)
    return "unknown"


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, which must not exist (FileExistsError otherwise, and nothing
    moves). Atomic where the OS has a no-replace rename; see the module docstring."""
    call = _renameat2()
    if call is not None:
        if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # else: no support here
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


_RENAMEAT2: list = []


def _renameat2():
    """libc's renameat2 (glibc 2.28+), or None."""
    if not _RENAMEAT2:
        function = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                function = libc.renameat2
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                     ctypes.c_uint]
                function.restype = ctypes.c_int
            except (OSError, AttributeError):
                function = None
        _RENAMEAT2.append(function)
    return _RENAMEAT2[0]
