"""SIGTERM and SIGHUP handled like Ctrl-C: the run stops at the next Python instruction with
`Terminated` (a KeyboardInterrupt), so every cleanup that Ctrl-C runs (the temporary folder, the
output's lock) runs too, and the command line exits 128 + the signal's number with one line.

Steps that must not be cut in two (the final renames, removing a temporary folder) run under
`deferred()`: a signal that arrives meanwhile is raised when the step is done. Once a run is
stopping, further signals are ignored, so that its cleanup completes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

NAMES = {"SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (`signum`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def what(self) -> str:
        return NAMES.get(signal.Signals(self.signum).name, signal.Signals(self.signum).name)


class _State:
    depth = 0  # nesting of deferred() blocks
    pending: int | None = None  # a signal that arrived inside one
    stopping = False  # Terminated was raised: ignore the rest


def install() -> None:
    """Handle SIGTERM and SIGHUP (main thread only; the command line's entry point calls it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _State.depth, _State.pending, _State.stopping = 0, None, False
    for name in NAMES:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _handle)


def _handle(signum: int, frame) -> None:
    if _State.stopping:
        return
    if _State.depth:
        _State.pending = signum
        return
    _State.stopping = True
    raise Terminated(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a SIGTERM/SIGHUP that arrives in it is raised at its end."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if (_State.depth == 0 and _State.pending is not None and not _State.stopping
                and threading.current_thread() is threading.main_thread()):
            signum, _State.pending = _State.pending, None
            _State.stopping = True
            raise Terminated(signum)
