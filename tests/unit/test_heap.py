"""The heap trimmer: glibc's free memory given back a while after the daemon worked."""

from __future__ import annotations

import asyncio

from execgate.daemon.audit import AuditRecord
from execgate.daemon.heap import HeapTrimmer, glibc_trim

RECORD = AuditRecord(event="run.exited", level="info")


class _Trims:
    """A stand-in for malloc_trim that counts its calls and tells when one came."""

    def __init__(self) -> None:
        self.count = 0
        self.came = asyncio.Event()

    def __call__(self) -> int:
        self.count += 1
        self.came.set()
        return 0


async def test_records_in_a_burst_bring_one_trim() -> None:
    trims = _Trims()
    trimmer = HeapTrimmer(trims, delay=0)
    for _ in range(3):
        trimmer.observe(RECORD)
    await asyncio.wait_for(trims.came.wait(), 5)
    assert trims.count == 1


async def test_a_record_after_a_trim_brings_another() -> None:
    trims = _Trims()
    trimmer = HeapTrimmer(trims, delay=0)
    trimmer.observe(RECORD)
    await asyncio.wait_for(trims.came.wait(), 5)
    trims.came.clear()
    trimmer.observe(RECORD)
    await asyncio.wait_for(trims.came.wait(), 5)
    assert trims.count == 2


def test_a_record_from_outside_the_event_loop_schedules_nothing() -> None:
    """The audit may be written from a thread; that record is no reason to fail."""
    trims = _Trims()
    HeapTrimmer(trims, delay=0).observe(RECORD)
    assert trims.count == 0


def test_glibc_trim_gives_back_free_memory_below_memory_still_in_use() -> None:
    """free() gives back only the top of the heap; a hole under a live block needs a trim."""
    trim = glibc_trim()
    assert trim is not None  # the test machines run glibc
    freed = [bytearray(64 * 1024) for _ in range(400)]  # 25 MiB, under the mmap threshold
    pinned = bytearray(4096)  # above them in the heap
    freed.clear()
    assert trim() > 2**20
    assert len(pinned) == 4096
