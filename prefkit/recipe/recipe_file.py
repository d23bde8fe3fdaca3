"""Reading a recipe file: only a regular file, and only up to MAX_RECIPE_BYTES, refused before it
is read (opening a FIFO would wait for a writer, /dev/zero never ends, a 200 MB file would be
parsed for minutes)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from prefkit.errors import RecipeError
from prefkit.io.jsonfile import os_error

# A recipe lists models and parameters: at the loader's 100,000-value limit it is still under 1 MB.
MAX_RECIPE_BYTES = 1 << 20


def read_recipe_bytes(path: Path) -> bytes:
    """The recipe's bytes, refused at once when it is not a regular file or is over
    MAX_RECIPE_BYTES (checked on the open file, then again while reading, which stops there)."""
    where = str(path)
    try:
        kind = _file_kind(os.stat(path).st_mode)
        if kind is not None:  # never opened: opening a FIFO waits, a device may act
            raise RecipeError(f"the recipe is {kind}, not a regular file", where=where,
                              hint="give a YAML file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            kind = _file_kind(info.st_mode)  # it may have been replaced since the stat
            if kind is not None:
                raise RecipeError(f"the recipe is {kind}, not a regular file", where=where,
                                  hint="give a YAML file")
            raw = file.read(MAX_RECIPE_BYTES + 1) if info.st_size <= MAX_RECIPE_BYTES else b""
    except FileNotFoundError as exc:
        raise RecipeError("recipe file not found", where=where) from exc
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # not the recipe's fault: say what to raise
            raise os_error(path, exc) from exc
        raise RecipeError(f"cannot read the recipe ({exc.strerror})", where=where) from exc
    except ValueError as exc:  # a NUL byte in the path (the Python API)
        raise RecipeError(f"cannot read the recipe ({exc})", where=repr(where)) from exc
    size = max(info.st_size, len(raw))
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"the recipe is {'over ' if len(raw) > MAX_RECIPE_BYTES else ''}"
                          f"{size} bytes; at most {MAX_RECIPE_BYTES} (1 MiB) are read",
                          where=where, hint="a recipe lists models and parameters: is this the "
                          "right file?")
    return raw


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "a special file")
