"""The error tree. Every error a user can cause is a PrefkitError; `cli.main` turns one into a
single line on stderr and an exit code. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    MERGE_FAILED = 1
    USAGE = 2
    INVALID_RECIPE = 3
    PLUGIN = 4
    HANGUP = 129  # SIGHUP (128 + 1): the terminal went away; stopped as for Ctrl-C
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15): asked to stop (kill, a scheduler); as for Ctrl-C


class PrefkitError(Exception):
    """Base class: `message` says what failed and where, `hint` what to do next."""

    exit_code: ExitCode = ExitCode.MERGE_FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class RecipeError(PrefkitError):
    """A recipe is malformed; `where` is `file:line:col` and `field` the dotted key path."""

    exit_code = ExitCode.INVALID_RECIPE

    def __init__(self, message: str, *, where: str = "", field: str = "", hint: str | None = None):
        self.where = where
        self.field = field
        prefix = ": ".join(p for p in (where, field) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint)


class RecipeErrors(PrefkitError):
    """Several problems found in one pass (validation reports all of them at once)."""

    exit_code = ExitCode.INVALID_RECIPE

    def __init__(self, errors: list[PrefkitError]):
        self.errors = errors
        super().__init__("\n".join(self.lines()))
        self.exit_code = max(e.exit_code for e in errors)

    def lines(self) -> list[str]:
        """One line per error, except that models missing from the hub's cache while the hub
        cannot be reached are one block: what to do once, then one short line per model."""
        missing = [e for e in self.errors if isinstance(e, NotCachedRecipeError)]
        if len(missing) < 2:
            return [str(e) for e in self.errors]
        head = (f"the Hugging Face hub is offline or unreachable, and {len(missing)} models are "
                f"not in its cache ({missing[0].cache}): run `prefkit fetch RECIPE` where the hub "
                "is reachable, or point HF_HOME at a cache that has them")
        rest = [str(e) for e in self.errors if not isinstance(e, NotCachedRecipeError)]
        return [head, *(f"  {e.located_ref()}" for e in missing), *rest]


class NotCachedRecipeError(RecipeError):
    """A hub model of the recipe that is not in the cache, the hub being offline or unreachable
    (`ref` the model id, `cache` the folder looked in); several are reported as one block."""

    ref: str = ""
    cache: str = ""

    def located_ref(self) -> str:
        prefix = ": ".join(p for p in (self.where, self.field) if p)
        return f"{prefix}: {self.ref}" if prefix else self.ref


class LocatedCheckpointError(RecipeError):
    """A damaged or unreadable checkpoint, reported at the recipe line naming the model: the
    merge failed (exit 1); the recipe itself is not at fault."""

    exit_code = ExitCode.MERGE_FAILED


class UnknownMethodError(RecipeError):
    pass


class UnknownTaskError(RecipeError):
    pass


class DataError(PrefkitError):
    """A task's data cannot be loaded or do not fit (missing split or field, label mismatch)."""


class PluginError(PrefkitError):
    """A plugin failed to load or broke the hook contract."""

    exit_code = ExitCode.PLUGIN

    def __init__(self, message: str, *, plugin: str = "", hint: str | None = None):
        self.plugin = plugin
        super().__init__(message, hint)


class DuplicateMethodError(PluginError):
    pass


class CheckpointError(PrefkitError):
    """An input checkpoint is missing, unreadable or inconsistent (names file and tensor)."""


class NotCachedError(CheckpointError):
    """A hub model that is not a local folder and not in the Hugging Face cache, while the hub is
    offline or unreachable."""

    def __init__(self, message: str, *, ref: str, cache: str, hint: str | None = None):
        super().__init__(message, hint)
        self.ref, self.cache = ref, cache


class OutputError(PrefkitError):
    """The output location cannot be written (exists without --force, not writable)."""

    exit_code = ExitCode.USAGE


class MergeError(PrefkitError):
    """A method raised while merging one tensor; names method, plugin and tensor."""


def did_you_mean(name: str, known) -> str:
    """`did you mean 'density'? ` when a known name is close to `name` (difflib), else ``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""
