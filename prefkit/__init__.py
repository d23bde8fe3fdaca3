"""prefkit: merge fine-tuned models for a preference over tasks.

The Python API (the same calls `prefkit run` makes; see README "Python API"):

- `prefkit.run(recipe, *, output=None, force=False, overrides=(), **options) -> RunResult`
- `prefkit.sweep(recipe, *, output=None, force=False, overrides=(), **options) -> SweepResult`

Errors are `prefkit.PrefkitError` subclasses whose `str()` is the line the CLI prints. The
implementation is imported on first call, so `import prefkit` (and `prefkit --help`) stay fast.
"""

from prefkit.errors import PrefkitError
from prefkit.version import __version__


def run(recipe, **kwargs):
    """Run one recipe (path or mapping); see `prefkit.batch.run`."""
    from prefkit.batch import run as _run

    return _run(recipe, **kwargs)


def sweep(recipe, **kwargs):
    """Run every point of a sweep recipe; see `prefkit.batch.sweep`."""
    from prefkit.batch import sweep as _sweep

    return _sweep(recipe, **kwargs)


__all__ = ["PrefkitError", "__version__", "run", "sweep"]
