"""Checkpoint metadata files from strangers: bounded reads, bounded JSON, one-line OS errors.

`config.json`, `model.safetensors.index.json` and safetensors headers are data that anyone may
have written. They are read only when they are regular files (a FIFO would block, a device never
end) of at most a stated size, and parsed only when their nesting is at most `MAX_DEPTH` levels
(found by a flat scan first, so no recursion limit or C stack is at stake). Every failure is one
CheckpointFileError naming the file; running out of file descriptors says so, and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

from prefkit.io.damage import CheckpointFileError

MAX_DEPTH = 64  # levels of [ ] / { } nesting; real configs use fewer than 10
MAX_CONFIG_BYTES = 16 * 2**20  # config.json (an id2label of 100,000 names is ~3 MB)
MAX_INDEX_BYTES = 64 * 2**20  # model.safetensors.index.json (~100 bytes per tensor)
FD_HINT = ("raise the limit of open files in the shell that runs prefkit (`ulimit -n 4096`, or "
           "higher), then run again")

_OPENERS = frozenset(b"[{")
_STEP = [1 if c in _OPENERS else -1 for c in range(256)]
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def size_text(nbytes: int) -> str:
    """`nbytes` for people: bytes, KiB, MiB or GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def plain_text(text: str) -> bool:
    """Printable characters that UTF-8 can encode (no control characters, no lone surrogates from
    `\\ud800` escapes): safe in one error line and in a file's header."""
    if not text.isprintable():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def os_error(file: Path, exc: OSError, doing: str = "read") -> CheckpointFileError:
    """One line for an OSError met while reading an input file."""
    code = exc.errno
    if code == errno.EMFILE:
        limit = _fd_limit()
        return CheckpointFileError(f"{file}: cannot open: too many open files (this process's limit"
                                   f"{f' of {limit}' if limit else ''} is reached)", hint=FD_HINT)
    if code == errno.ENFILE:
        return CheckpointFileError(f"{file}: cannot open: too many open files on this system",
                                   hint="close other programs' files or raise the system's limit "
                                   "(fs.file-max), then run again")
    if code == errno.ELOOP:
        return CheckpointFileError(f"{file}: cannot {doing}: it is a symlink loop",
                                   hint="point the link at a real file")
    why = exc.strerror or str(exc)
    return CheckpointFileError(f"{file}: cannot {doing} ({why})",
                               hint="check that the file exists and is readable")


def _fd_limit() -> int | None:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None


def open_regular(file: Path):
    """`file` opened for binary reading, refusing what is not a regular file (without blocking
    on a FIFO). Raises CheckpointFileError."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise os_error(file, exc, "open") from exc
    except ValueError as exc:  # a NUL byte in the path
        raise CheckpointFileError(f"{file!r}: not a valid file name ({exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise CheckpointFileError(f"{file}: is {what}", hint="a checkpoint's weights, index and "
                                      "config are regular files")
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_bounded(file: Path, limit: int, what: str) -> bytes:
    """The bytes of `file`, which may be at most `limit` bytes long."""
    def too_large(size: str) -> CheckpointFileError:
        return CheckpointFileError(f"{file}: {what} is {size} bytes, more than the "
                                   f"{size_text(limit)} allowed",
                                   hint=f"the {what} is damaged or not what it claims to be")

    with open_regular(file) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise too_large(f"{size:,}")
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise os_error(file, exc) from exc
    if len(raw) > limit:  # it grew meanwhile
        raise too_large("over " + f"{limit:,}")
    return raw


def too_deep(raw: bytes) -> bool:
    """Whether [ ] and { } nest more than MAX_DEPTH levels in JSON text, outside strings (a flat
    scan: no recursion)."""
    flat = raw.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes, which only strings hold
    outside = b"".join(flat.split(b'"')[0::2]).translate(None, _NOT_BRACKETS)
    if outside.count(b"[") + outside.count(b"{") <= MAX_DEPTH:
        return False  # it cannot be deeper than the openers it has
    return max(accumulate(map(_STEP.__getitem__, outside))) > MAX_DEPTH


def parse_json(file: Path, raw: bytes, what: str, hint: str | None = None) -> Any:
    """JSON text of at most MAX_DEPTH levels; a CheckpointError naming `file` and `what` else."""
    hint = hint or f"the {what} is damaged: restore it from the model's source"
    if too_deep(raw):
        raise CheckpointFileError(f"{file}: {what} is nested more than {MAX_DEPTH} levels deep",
                                  hint=hint)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointFileError(f"{file}: {what} is not valid JSON ({one_line(exc)})",
                                  hint=hint) from exc


def read_json(file: Path, limit: int, what: str) -> Any:
    """Read and parse a bounded JSON file (see the module docstring)."""
    return parse_json(file, read_bounded(file, limit, what), what)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200]
