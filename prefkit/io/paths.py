"""Path input from recipes and flags: names the file system can hold, where an output may go, and
whether two paths name the same thing.

Output names are checked before anything is written: no NUL byte, no folder name longer than the
file system's NAME_MAX (255 bytes on Linux; the output's own name leaves room for the hidden
`.<name>.prefkit-tmp-<pid>-<start>` sibling it is written in), and an absolute path short
enough, with the files inside it, for PATH_MAX (4096). Where an output may go compares resolved
paths and file identity (st_dev, st_ino), so a symlink, `./a` vs `a/` or a bind mount cannot
hide an input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

NAME_MAX = 255  # bytes per path component (Linux, and most file systems elsewhere)
PATH_MAX = 4096  # bytes of a path handed to the kernel, its final NUL included
# The output is written in `.<name>.prefkit-tmp-<pid>-<start>` (or renamed to
# `.<name>.prefkit-old-<pid>-<start>`, locked by `.<name>.prefkit-lock`): 14 bytes of marks, up to
# 7 digits of pid (Linux's pid_max is at most 2^22) and 21 of `-<start>` (clock ticks, 64 bits).
SIBLING_ROOM = len("..prefkit-tmp-") + 7 + 21
# Files inside the output (shards, heads/<task>.safetensors, their temporary names): one more
# component and its separator.
INSIDE_ROOM = NAME_MAX + 1


def shown(text: str, limit: int = 48) -> str:
    """A path for an error line: repr'd (control characters visible), long ones shortened."""
    if len(text) > limit:
        text = f"{text[:limit // 2]}…{text[-limit // 4:]}"
    return repr(text)


def name_problem(text: str, *, output: bool, name_max: int = NAME_MAX,
                 path_max: int = PATH_MAX) -> str | None:
    """Why `text` cannot name a path (`output`: a folder prefkit will write), or None.

    Only the text is looked at: lengths are in bytes of its file-system encoding, the path as
    given (relative or absolute)."""
    if "\x00" in text:
        return f"{shown(text)} holds a NUL byte, which no file name may hold"
    try:
        raw = os.fsencode(text)
    except UnicodeError:
        return f"{shown(text)} cannot be encoded as a file name"
    parts = [p for p in raw.split(b"/") if p]
    for i, part in enumerate(parts):
        sibling = output and i == len(parts) - 1  # its temporary sibling's name is longer
        limit = name_max - SIBLING_ROOM if sibling else name_max
        if len(part) > limit:
            which = "its last folder name" if sibling else "a name in it"
            return (f"{shown(text)}: {which} is {len(part)} bytes; at most {limit} are allowed "
                    f"({_name_limit_why(name_max, sibling)})")
    room = INSIDE_ROOM if output else 0
    if len(raw) + room >= path_max:
        return (f"{shown(text)} is {len(raw)} bytes long; at most {path_max - room - 1} are "
                f"allowed (PATH_MAX {path_max}" + (", less room for the files inside it)"
                                                     if output else ")"))
    return None


def _name_limit_why(name_max: int, sibling: bool) -> str:
    why = f"the file system's limit is {name_max} bytes per name"
    return why + (", less room for the hidden sibling the output is written in" if sibling else "")


def output_name_problem(out: Path) -> str | None:
    """`name_problem` for an output folder against its own file system (the limits of the
    nearest folder that exists), the absolute path's length included."""
    text = os.fspath(out)
    if "\x00" in text:
        return name_problem(text, output=True)
    absolute = os.path.abspath(text)
    name_max, path_max = _limits(Path(absolute))
    problem = name_problem(text, output=True, name_max=name_max, path_max=path_max)
    if problem is not None:
        return problem
    size = len(os.fsencode(absolute))
    if size + INSIDE_ROOM >= path_max:
        return (f"{shown(text)} is {size} bytes long as an absolute path; at most "
                f"{path_max - INSIDE_ROOM - 1} are allowed (PATH_MAX {path_max}, less room "
                "for the files inside it)")
    return None


def _limits(path: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX where `path` would be (the nearest folder that exists)."""
    for folder in (path, *path.parents):
        try:
            if folder.is_dir():
                return (min(NAME_MAX, os.pathconf(folder, "PC_NAME_MAX")),
                        min(PATH_MAX, os.pathconf(folder, "PC_PATH_MAX")))
        except (OSError, ValueError):
            continue
    return NAME_MAX, PATH_MAX


def identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what `path` names (symlinks followed), or None if it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _chain(path: Path) -> tuple[list[Path], set[tuple[int, int]]]:
    """`path` resolved with its ancestors, and the identities of those that exist."""
    resolved = path.resolve()
    chain = [resolved, *resolved.parents]
    return chain, {key for p in chain if (key := identity(p)) is not None}


def is_within(inner: Path, outer: Path) -> bool:
    """`inner` is `outer` or lies inside it, by resolved path or by file identity."""
    chain, keys = _chain(inner)
    outer_resolved = outer.resolve()
    outer_key = identity(outer_resolved)
    return outer_resolved in chain or (outer_key is not None and outer_key in keys)


def location_problem(out: Path, inputs: Iterable[tuple[Path, str]], recipe: Path) -> str | None:
    """Why `out` may not be the output folder, or None. The output is replaced as a whole with
    `--force`, so it may not hold an input model, the recipe or the working directory; and an
    output inside an input model's folder would change that input (`inputs`: (folder, what))."""
    guarded = [(recipe.resolve().parent, "the recipe's folder"),
               (Path.cwd().resolve(), "the working directory")]
    inputs = list(inputs)
    for path, what in [*guarded, *inputs]:
        if is_within(path, out):
            return f"output {out} would contain {what}"
    for path, what in inputs:
        if is_within(out, path):
            return f"output {out} is inside {what}"
    return None
