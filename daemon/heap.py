"""Giving the heap's free memory back to the kernel while the daemon works.

glibc's malloc keeps what the program frees for its next allocations, and gives memory back
only from the top of each arena. The daemon streams output in chunks of up to a MiB through
the event loop's arena and gRPC's threads' arenas, so their free memory lies scattered and
RSS grows with it: 12 kB per output flood (bench/bench_memory.py --kind flood: 2,000 floods
took it from 98.5 to 122.1 MiB, and ``malloc_trim(0)`` to 70.5), and most of the long soak's
growth. Nothing leaks: ``malloc_trim(0)`` returns every free page of every arena, in 8 ms for
67 MiB here, and the ``HeapTrimmer`` calls it a while after the daemon did something. In a
4-minute soak of 20 clients, RSS went +4.0% without trims and -2.3% with one every 10 s.

Output chunks of a MiB are also why glibc's defaults cost CPU: each block over its mmap
threshold (128 kB, raised only by a free of a bigger block) is a fresh ``mmap`` whose every
page faults in, and each free an ``munmap``: a MiB of output was several such blocks (the
chunk read, its messages), about 0.1 ms of the daemon's 1.15 ms per MiB here.
``keep_big_blocks`` serves blocks up to BIG_BLOCK from the heap and keeps up to KEPT_FREE of
free heap before trimming on its own (the trimmer gives it back a moment later anyway).

Elsewhere than glibc (musl) there is no ``malloc_trim``, and no trimmer.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable

import structlog

from execgate.daemon.audit import AuditRecord

BIG_BLOCK = 4 * 1024 * 1024
"""Blocks up to this size come from the heap, not from mmap (glibc's M_MMAP_THRESHOLD)."""
KEPT_FREE = 64 * 1024 * 1024
"""Free heap kept at the top of an arena before glibc trims it (M_TRIM_THRESHOLD)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TRIM_DELAY = 10.0
"""Seconds from the first audit record after a trim to the next trim: a busy daemon stops its
event loop for a few milliseconds every TRIM_DELAY."""
log = structlog.get_logger()


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def keep_big_blocks() -> bool:
    """Tell glibc's malloc to serve output-sized blocks from the heap and to keep freed
    ones for the next (both settings together: a fixed mmap threshold alone turns off
    glibc's own raising of the trim threshold, and each free then trims); False where the
    C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, KEPT_FREE) and mallopt(_M_MMAP_THRESHOLD, BIG_BLOCK))


def glibc_trim() -> Callable[[], int] | None:
    """A function that trims the heap and returns the bytes of RSS it gave back; None where
    the C library has no ``malloc_trim``."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]

    def trim() -> int:
        before = _resident()
        malloc_trim(0)
        return before - _resident()
    return trim


class HeapTrimmer:
    """An audit observer: every record says the daemon works, so a trim follows ``delay``
    seconds after the first record since the last trim. A daemon with nothing to do is never
    woken; a busy one trims once per ``delay``, and once more after it falls quiet."""

    def __init__(self, trim: Callable[[], int], delay: float = TRIM_DELAY) -> None:
        self._trim = trim
        self._delay = delay
        self._pending: asyncio.TimerHandle | None = None

    def observe(self, record: AuditRecord) -> None:
        """Schedule a trim, unless one is."""
        if self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a record from outside the loop: the loop's next one will do
            return
        self._pending = loop.call_later(self._delay, self._trimmed)

    def _trimmed(self) -> None:
        self._pending = None
        log.debug("heap.trimmed", released_bytes=self._trim())
