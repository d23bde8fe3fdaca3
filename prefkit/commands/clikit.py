"""What the `prefkit` commands share (CLI only): the registry each invocation loads once, error
lines on stderr, option parsers and help texts."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import click

from prefkit.errors import ExitCode, PrefkitError, RecipeErrors

RegistryFactory = Callable[[], Any]  # () -> prefkit.registry.Registry
ALLOW_PICKLE_HELP = ("Read pickle checkpoints (pytorch_model.bin), which can run code when loaded; "
                     "only for files you trust (read with torch.load(weights_only=True)).")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000` → bytes."""
    match = _SIZE.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size such as 5GB or 500MB")
    number, unit = float(match.group(1)), match.group(2).upper()
    base = 1024 if "I" in unit else 1000
    power = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("B").rstrip("I") or ""]
    size = number * base**power
    if not math.isfinite(size):
        raise click.BadParameter(f"{text!r} is too large a size")
    return int(size)


class OptionError(PrefkitError):
    """A command-line option's value is outside what it allows (exit 2, one line)."""

    exit_code = ExitCode.USAGE


# Output shards: below a few KB every tensor would be a file of its own; above 1TB no file system
# or hub takes it.
MIN_SHARD_BYTES = 4_000
MAX_SHARD_BYTES = 10**12


def parse_shard_size(text: str) -> int:
    """`--max-shard-size`: a size from 4KB to 1TB, else an OptionError naming the range."""
    try:
        size = parse_size(text)
    except click.BadParameter:
        size = None
    if size is None or not MIN_SHARD_BYTES <= size <= MAX_SHARD_BYTES:
        what = "is not a size" if size is None else f"is {size} bytes"
        raise OptionError(f"--max-shard-size {text!r} {what}; allowed: 4KB to 1TB",
                          hint="give a size such as 500MB or 5GB, the default")
    return size


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def report_error(exc: PrefkitError) -> None:
    """A PrefkitError as `Error: ...` lines on stderr (one per recipe error)."""
    if isinstance(exc, RecipeErrors):
        for line in exc.lines():  # a grouped block's own lines are indented
            echo_err(line if line.startswith("  ") else f"Error: {line}")
    else:
        echo_err(f"Error: {exc}")


class CliState:
    """One CLI object's registry: made by `factory` on first use, plus the `--plugins-dir`
    plugins; made again when the group is invoked with another `--plugins-dir` (tests invoke one
    CLI object many times). Plugins that failed to load are warned about on stderr."""

    def __init__(self, factory: RegistryFactory):
        self._factory = factory
        self._registry: Any = None
        self.plugins_dir: str | None = None

    def use_plugins_dir(self, plugins_dir: str | None) -> None:
        if self.plugins_dir != plugins_dir:
            self._registry = None
        self.plugins_dir = plugins_dir

    def registry(self) -> Any:
        if self._registry is None:
            self._registry = self._factory()
            if self.plugins_dir:
                from prefkit.registry import add_plugins, load_plugins_dir

                add_plugins(self._registry, load_plugins_dir(self.plugins_dir))
            for plugin, error in self._registry.failed.items():
                echo_err(f"Warning: plugin {plugin!r} failed to load: {error}")
        return self._registry
