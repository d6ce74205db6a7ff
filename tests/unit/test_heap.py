"""The heap trimmer: glibc's free memory given back a while after the daemon worked."""

from __future__ import annotations

import asyncio
import subprocess
import sys

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


_MAPPED_BLOCKS = """
import ctypes
from execgate.daemon.heap import keep_big_blocks
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
          "fordblks", "keepcost")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def mmapped(size):
    before = libc.mallinfo2().hblks
    block = bytearray(size)
    return libc.mallinfo2().hblks - before
print(mmapped(3 << 20), keep_big_blocks(), mmapped(3 << 20))
"""


def test_after_keep_big_blocks_an_output_sized_block_comes_from_the_heap() -> None:
    """glibc mmaps a 3 MiB block by default; after keep_big_blocks it does not (its own
    process: the setting is the whole process's)."""
    out = subprocess.run([sys.executable, "-c", _MAPPED_BLOCKS], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "True", "0"]
