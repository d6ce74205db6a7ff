"""A memory probe inside a daemon under a bench (a debugging aid, never part of the product).

bench_memory.py puts this directory first on the daemon's ``PYTHONPATH`` with
``EXECGATE_MEMPROBE=1``. Python imports ``sitecustomize`` at start; in the daemon (not in
its sandbox helper) this installs a SIGUSR2 handler that writes one line
``{"memprobe": {...}}`` to the daemon's stderr with:

- ``rss``, and the gRPC calls alive (``RPCState``) before and after a full collection:
  those it frees were held by cyclic garbage, which the collector frees late in a big heap;
- glibc's ``mallinfo2``: bytes malloc hands out (``uordblks``) and keeps free (``fordblks``);
- live objects by type; with ``EXECGATE_MEMPROBE_FRAMES=N`` the Python heap by allocating
  line (tracemalloc, N frames; slow); with ``EXECGATE_MEMPROBE_HOLDERS=<type>`` what holds a
  few objects of that type.

SIGUSR1 writes the same line and then calls ``malloc_trim(0)`` (``rss_after_trim``): what
the trim gives back was free memory the allocator kept (fragmentation); what it does not is
held by something (a leak).
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from typing import Any

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
           "uordblks", "fordblks", "keepcost")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def _is_daemon() -> bool:
    with open("/proc/self/cmdline", "rb") as f:
        return b"execgate.daemon.cli" in f.read()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _count(type_name: str) -> int:
    """Live objects of ``type_name`` the collector tracks."""
    return sum(type(o).__qualname__ == type_name for o in gc.get_objects())


def _holders(type_name: str, samples: int = 3, depth: int = 40) -> list[list[str]]:
    """For the newest few live objects of ``type_name``, a chain of referrers: each the
    first that is neither a frame nor one of this walk's own lists; runs of lists or
    tracebacks are shown once."""
    found = [o for o in gc.get_objects() if type(o).__qualname__ == type_name][-samples:]
    ours = {id(found)}
    chains = []
    for obj in found:
        chain: list[str] = []
        current = obj
        for _ in range(depth):
            referrers = gc.get_referrers(current)
            ours.add(id(referrers))
            held = [r for r in referrers if id(r) not in ours and type(r).__name__ != "frame"]
            if not held:
                break
            current = held[0]
            name = type(current).__qualname__
            if chain and chain[-1].startswith(f"{name}:") and name in ("list", "traceback"):
                continue
            chain.append(f"{name}: {repr(current)[:160]}")
        chains.append(chain)
    return chains


def _install() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    frames = int(os.environ.get("EXECGATE_MEMPROBE_FRAMES") or 0)
    holders = os.environ.get("EXECGATE_MEMPROBE_HOLDERS", "")
    if frames:
        tracemalloc.start(frames)

    def dump(trim: bool) -> None:
        line: dict[str, Any] = {"rss_before_collect": _rss(),
                                "calls_before_collect": _count("RPCState")}
        if holders:  # before the collection frees what is garbage
            line["holders"] = _holders(holders)
        line.update(collected=gc.collect(), rss=_rss(), calls=_count("RPCState"))
        info = libc.mallinfo2()
        line["mallinfo2"] = {name: getattr(info, name) for name in _FIELDS}
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        line["types"] = dict(types.most_common(300))
        line["objects"] = sum(types.values())
        line["pymalloc_blocks"] = sys.getallocatedblocks()
        if tracemalloc.is_tracing():
            stats = tracemalloc.take_snapshot().statistics(
                "traceback" if frames > 1 else "lineno")
            line["traced"] = sum(s.size for s in stats)
            line["tracemalloc"] = {
                " <- ".join(f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}"
                            for fr in s.traceback): s.size for s in stats[:400]}
        if trim:
            started = time.perf_counter()
            libc.malloc_trim(0)
            line["trim_seconds"] = time.perf_counter() - started
            line["rss_after_trim"] = _rss()
        sys.stderr.write(json.dumps({"memprobe": line}) + "\n")
        sys.stderr.flush()

    signal.signal(signal.SIGUSR2, lambda signum, frame: dump(False))
    signal.signal(signal.SIGUSR1, lambda signum, frame: dump(True))


if os.environ.get("EXECGATE_MEMPROBE") == "1" and _is_daemon():
    _install()
