"""The heap trimmer: glibc's free pages go back to the system every so many bytes of input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from prefkit.engine import memory
from tests.helpers import merge

REF = """\
merge_method: ties
base_model: zoo/base
models:
  - model: zoo/ag_news
  - model: zoo/imdb
parameters: {weight: 1, density: 0.3, trim: global}
"""


def test_trims_once_per_every_bytes():
    calls = []
    trimmer = memory.HeapTrimmer(every=250, trim=calls.append)
    for _ in range(7):
        trimmer.note(100)
    assert calls == [0, 0] and trimmer.trims == 2  # after 300 bytes, then after 300 more


def test_without_malloc_trim_nothing_happens(monkeypatch):
    monkeypatch.setattr(memory, "malloc_trim", lambda: None)
    trimmer = memory.HeapTrimmer(every=1)
    trimmer.note(10)
    assert trimmer.trims == 0


def test_malloc_trim_gives_free_heap_pages_back():
    """On glibc (this project's Linux machines): buffers freed between live ones stay resident
    until `malloc_trim(0)`, which gives them back."""
    code = textwrap.dedent("""
        import ctypes, os
        from prefkit.engine.memory import malloc_trim
        trim = malloc_trim()
        assert trim is not None, "glibc has malloc_trim"
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        size = 100 << 10  # under the mmap threshold: from the heap
        blocks = [libc.malloc(size) for _ in range(2000)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in blocks[:-1:2]:  # every other one: holes between live blocks
            libc.free(b)
        before = rss()
        trim(0)
        print(before - rss())
    """)
    freed = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert freed > 50 << 20  # most of the ~100 MB freed in holes


def test_a_merge_trims_as_it_reads(workdir, registry, monkeypatch):
    plain = merge(workdir, REF, registry, output="plain")
    calls = []
    monkeypatch.setattr(memory, "TRIM_EVERY", 1)
    monkeypatch.setattr(memory, "malloc_trim", lambda: calls.append)
    trimmed = merge(workdir, REF, registry, output="trimmed")
    assert len(calls) > 10 and set(calls) == {0}
    assert all(plain[n].equal(trimmed[n]) for n in plain)
