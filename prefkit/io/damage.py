"""The error of a checkpoint whose folder was found but whose files cannot be used.

`CheckpointFileError` is a CheckpointError raised for a file of an existing checkpoint folder that
is damaged, lying, hostile or unreadable (a header, index or config.json that fails its checks, a
symlink loop, too many open files). The merge fails (exit 1): the recipe is not at fault, unlike a
model reference that names no checkpoint at all (`prefkit.io.hub`, `prefkit.io.checkpoint`'s
"not a checkpoint folder"), which callers may report against the recipe's line.
"""

from __future__ import annotations

from prefkit.errors import CheckpointError

DAMAGED = "the checkpoint is damaged: download or copy it again"


class CheckpointFileError(CheckpointError):
    """A file of a found checkpoint is damaged, lying or unreadable (names file and tensor/key)."""
