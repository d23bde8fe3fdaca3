"""The output folder's life: where it may go, the hidden sibling it is written in, replacing an
old output, and cleaning up after a process that was killed.

A run owns its output while it runs (`claim_output`: the lock of `prefkit.io.ownership`, then
the checks). A merge writes into `.<name>.prefkit-tmp-<pid>-<start>` beside the output (`<start>`:
the process's start time, so a later process given the same pid is not taken for it) and renames
it into place only when complete, so a crash never leaves a folder that looks finished. That
rename never replaces what is not ours: an output that appeared meanwhile, or changed from the
one `--force` agreed to replace, is left alone and the new result kept under its temporary name
(marked `KEPT`, so no later run removes it). Replacing an old output renames it to
`.<name>.prefkit-old-<pid>-<start>` first and deletes it (a symlink: the link only) after the new
one is in place. The next run for the same output removes siblings whose process is gone, and
puts an old output back if a kill came between the two renames.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from prefkit.errors import OutputError
from prefkit.io.interrupts import deferred
from prefkit.io.ownership import OutputAppeared, alive, hold_output, owner_tag, rename_noreplace

TMP = "prefkit-tmp"
OLD = "prefkit-old"
PROVENANCE = "prefkit.json"  # every folder prefkit writes has one
KEPT = ".prefkit-kept"  # in a finished result that could not be moved into place: not stale


def temp_sibling(out: Path, kind: str = TMP) -> Path:
    return out.parent / f".{out.name}.{kind}-{owner_tag()}"


def check_replaceable(out: Path) -> None:
    """`--force` replaces only an output prefkit wrote (it has prefkit.json) or an empty folder."""
    if not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder", hint="choose another -o")
    if not (out / PROVENANCE).is_file() and any(out.iterdir()):
        raise OutputError(f"output {out} exists and was not written by prefkit (no {PROVENANCE})",
                          hint="--force replaces only prefkit outputs; move it or choose another -o")


Identity = tuple  # (st_dev, st_ino, the bytes of its prefkit.json or None): see `replaced_identity`


def replaced_identity(out: Path) -> Identity:
    """What `--force` agreed to replace: the entry itself (a symlink is not followed) and the
    provenance it had."""
    stat = os.lstat(out)
    try:
        provenance = (out / PROVENANCE).read_bytes()
    except OSError:
        provenance = None
    return stat.st_dev, stat.st_ino, provenance


def check_output(out: Path, force: bool) -> Identity | None:
    """The checks before a run: None when `out` is absent, else (with `force`, for a folder
    prefkit wrote) the identity of what the run may replace."""
    if not os.path.lexists(out):
        return None
    if not force:
        raise OutputError(f"output {out} already exists", hint="pass --force to replace it, or -o")
    check_replaceable(out)
    return replaced_identity(out)


@contextlib.contextmanager
def claim_output(out: Path, force: bool, note: Callable[[str], None]) -> Iterator[Identity | None]:
    """Own `out` for the block: hold its lock, clean up after interrupted runs (each thing done
    is passed to `note`), check it (`check_output`); yields what the final rename may replace.

    Raises:
        OutputError: another run holds it, it exists (without `force`), or it cannot be written.
    """
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_output(out, notes))
            notes += recover_interrupted(out, locked=True)
        except OSError as exc:  # the lock file (or the output's parent) cannot be created or
            raise write_error(out, exc) from exc  # listed (out of file descriptors, say)
        for line in notes:
            note(line)
        yield check_output(out, force)


def replace_folder(tmp: Path, out: Path, agreed: Identity | None = None) -> None:
    """Move the finished folder into place without replacing anything but `agreed` (what
    `--force` agreed to replace; None: nothing), and delete that only after.

    Raises:
        OutputAppeared: something else is at `out`; it is left alone, `tmp` is kept (marked).
    """
    with deferred():  # a signal meanwhile waits until the renames are done or undone
        if agreed is None or not os.path.lexists(out):
            try:
                rename_noreplace(tmp, out)
            except FileExistsError:
                raise _appeared(tmp, out) from None
            return
        old = temp_sibling(out, OLD)
        rename_noreplace(out, old)
        if replaced_identity(old) != agreed:  # replaced since the check: put it back, keep ours aside
            rename_noreplace(old, out)
            raise _appeared(tmp, out)
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise _appeared(tmp, out) from None
        except BaseException:
            rename_noreplace(old, out)
            raise
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def _appeared(tmp: Path, out: Path) -> OutputAppeared:
    (tmp / KEPT).write_text(f"prefkit kept this result here: {out} was not the output it could "
                            "replace. Move it where you want it; this file can go.\n")
    return OutputAppeared(
        f"output {out} appeared or changed while this run wrote it; it was left as it is, and "
        f"the new result is kept at {tmp}", tmp, hint="move one of them, then run again")


def recover_interrupted(out: Path, locked: bool = False) -> list[str]:
    """Clean up after runs for `out` that were killed; returns what was done, for the user.

    A sibling is stale when the process its name marks (pid and start time) is gone; one named
    by pid alone (an older prefkit, or no /proc) also when `locked` (this process holds the
    output's lock, so no live run writes it). A stale temporary sibling is deleted, unless it is
    a kept result (`KEPT`). A stale old output is put back when nothing is at `out` (the kill
    came between the two renames of a replacement), otherwise deleted.
    """
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.({TMP}|{OLD})-(\d+)(?:-(\d+))?$")
    notes = []
    for sibling in sorted(out.parent.iterdir()):
        match = pattern.match(sibling.name)
        if match is None or (sibling / KEPT).exists():
            continue
        pid, start = int(match.group(2)), match.group(3)
        if alive(pid, start) and not (locked and start is None and pid != os.getpid()):
            continue
        if match.group(1) == OLD and not os.path.lexists(out):
            sibling.rename(out)
            notes.append(f"{out}: restored the previous output (a replacement was interrupted)")
        else:
            _remove(sibling)
            notes.append(f"{out}: removed {sibling.name} left by an interrupted run")
    return notes


def write_atomic(path: Path, text: str) -> None:
    """Write a small file so that a crash leaves the old one or the new one, never half of one."""
    tmp = path.parent / f".{path.name}.{TMP}-{os.getpid()}"
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_error(out: Path, exc: OSError) -> OutputError:
    """One line for a failed write: which output, why, what to do. Running out of file
    descriptors is said as such (it is not a full disk): raise `ulimit -n`."""
    import errno

    why = exc.strerror or str(exc)
    file = f" ({Path(exc.filename).name})" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        where = "this process" if exc.errno == errno.EMFILE else "the system"
        return OutputError(f"output {out}: cannot write{file}: too many open files (the limit of "
                           f"{where} is reached)", hint="raise the limit of open files in the "
                           "shell that runs prefkit (`ulimit -n 4096`, or higher) and run again; "
                           "nothing was left behind")
    return OutputError(f"output {out}: cannot write{file}: {why}",
                       hint="free disk space or check permissions and file size limits (ulimit -f), "
                       "or write elsewhere with -o; nothing was left behind")


def _remove(path: Path) -> None:
    """Delete a sibling we made (a symlink moved aside: the link, never what it points to)."""
    with deferred():
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
