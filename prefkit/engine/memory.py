"""Handing the C heap's free pages back to the system while a merge runs.

A merge allocates many short-lived buffers of 0.1-5 MB (histograms, kept bit patterns, chunk
temporaries) on several threads, between long-lived ones. glibc serves them from per-thread heaps
whose freed holes stay resident: over a global TIES pre-pass that came to 40-80 MB of resident
memory more than was live, varying from run to run. `malloc_trim(0)` returns the free pages
inside the heaps; called once per `TRIM_EVERY` bytes of input read, it costs ~50 µs a call. (A
fixed `M_MMAP_THRESHOLD` would return every freed buffer at once, but then every new one is
fresh pages to fault in: per-tensor TIES ran 0.6-1 s slower that way.) Where the C library has
no `malloc_trim` (not glibc), nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

TRIM_EVERY = 64 << 20  # bytes of input between two trims


@functools.cache
def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none."""
    try:  # the symbols the process already has (no search for the library: it is loaded)
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc; TypeError: Windows
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


class HeapTrimmer:
    """Calls `trim(0)` each time another `every` bytes have been `note`d."""

    def __init__(self, every: int | None = None, trim: Callable[[int], int] | None = None) -> None:
        self.every, self.trims = every or TRIM_EVERY, 0
        self._trim = trim if trim is not None else malloc_trim()
        self._since = 0

    def note(self, nbytes: int) -> None:
        if self._trim is None:
            return
        self._since += nbytes
        if self._since >= self.every:
            self._since = 0
            self._trim(0)
            self.trims += 1
