"""The output folder's life: where it may go, the hidden sibling it is written in, replacing an
old output, and cleaning up after a process that was killed.

A merge writes into `.<name>.prefkit-tmp-<pid>` beside the output and renames it into place only
when complete, so a crash never leaves a folder that looks finished. Replacing an old output
(`--force`) renames it to `.<name>.prefkit-old-<pid>` first and deletes it after the new one is in
place. The next run for the same output removes siblings whose process is gone, and puts an old
output back if a kill came between the two renames.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from prefkit.errors import OutputError

TMP = "prefkit-tmp"
OLD = "prefkit-old"
PROVENANCE = "prefkit.json"  # every folder prefkit writes has one


def temp_sibling(out: Path, kind: str = TMP) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}"


def location_problem(out: Path, inputs: dict[str, Path], recipe: Path) -> str | None:
    """Why `out` may not be the output folder, or None. The output is replaced as a whole with
    `--force`, so it may not hold an input model (`inputs`: label → folder), the recipe, or the
    working directory; nor may it lie inside an input model's folder (resolved paths and file
    identity: `prefkit.io.paths.location_problem`)."""
    from prefkit.io.paths import location_problem as problem

    return problem(out, [(path, f"the input model {label}") for label, path in inputs.items()],
                   recipe)


def check_replaceable(out: Path) -> None:
    """`--force` replaces only an output prefkit wrote (it has prefkit.json) or an empty folder."""
    if not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder", hint="choose another -o")
    if not (out / PROVENANCE).is_file() and any(out.iterdir()):
        raise OutputError(f"output {out} exists and was not written by prefkit (no {PROVENANCE})",
                          hint="--force replaces only prefkit outputs; move it or choose another -o")


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old output goes only after."""
    if out.exists():
        old = temp_sibling(out, OLD)
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def recover_interrupted(out: Path) -> list[str]:
    """Clean up after runs for `out` that were killed; returns what was done, for the user.

    A temporary sibling of a dead process is deleted. An old output of a dead process is put
    back when nothing is at `out` (the kill came between the two renames of a replacement),
    otherwise deleted.
    """
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.({TMP}|{OLD})-(\d+)$")
    notes = []
    for sibling in sorted(out.parent.iterdir()):
        match = pattern.match(sibling.name)
        if match is None or _alive(int(match.group(2))):
            continue
        if match.group(1) == OLD and not out.exists():
            sibling.rename(out)
            notes.append(f"{out}: restored the previous output (a replacement was interrupted)")
        else:
            shutil.rmtree(sibling, ignore_errors=True)
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


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
