"""Measurements the benchmarks share: the in-process floor, execgate over a warm channel, and
a process's peak RSS while something runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from execgate.client import AsyncClient, OutputChunk
from tests.conftest import API_KEY

STREAMING = ["sh", "-c", "echo first; sleep 1; echo last"]
"""A command whose first output comes a second before its end (time to first byte)."""


def text_file(path: Path, size: int) -> Path:
    """``path``, written with ``size`` bytes of text (readable by every contender's command):
    what the stdout flood prints. Text, so that a peer answering in JSON is not charged for
    escaping NULs; a file, so that the command printing it costs little next to the transport
    measured (``yes | head -c``, two processes and a pipe, ran at 600-750 MB/s into a local
    reader here: the producer, not the transport, would be measured)."""
    block = (b"y" * 63 + b"\n") * 16384  # a MiB of lines
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])
    path.chmod(0o644)
    return path


def stdout_flood(path: Path | str) -> list[str]:
    """A command printing the file at ``path`` to stdout."""
    return ["cat", str(path)]


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The sample below which ``fraction`` of them lie (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def local_true(calls: int) -> list[float]:
    """``subprocess.run(['/bin/true'])`` in this process: the floor of any way to run a command."""
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        samples.append(time.perf_counter() - t)
    return samples


def local_pipe(argv: Sequence[str]) -> tuple[float, int]:
    """Seconds to read ``argv``'s stdout from a local pipe, and the bytes read."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    received = 0
    while chunk := os.read(proc.stdout.fileno(), 1 << 20):
        received += len(chunk)
    proc.wait()
    proc.stdout.close()
    return time.perf_counter() - t, received


def local_concurrent(argv: Sequence[str], count: int) -> float:
    """Seconds for ``count`` local processes of ``argv`` started together to all end."""
    t = time.perf_counter()
    procs = [subprocess.Popen(argv) for _ in range(count)]
    assert all(p.wait() == 0 for p in procs)
    return time.perf_counter() - t


def local_first_byte(argv: Sequence[str]) -> float:
    """Seconds from starting ``argv`` locally to its first byte of stdout."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    os.read(proc.stdout.fileno(), 1)
    first = time.perf_counter() - t
    proc.wait()
    proc.stdout.close()
    return first


async def async_round_trips(target: str, calls: int, tool: str = "shell", pause: float = 0.0,
                            warmup: int = 50) -> list[float]:
    """Round trips of ``true`` on one warm channel, back to back or with ``pause`` seconds
    between calls (a caller that does something with each result, as agents do)."""
    async with AsyncClient(target, token=API_KEY) as c:
        for _ in range(warmup):
            await c.run(["true"], tool=tool)
        samples = []
        for _ in range(calls):
            if pause:
                await asyncio.sleep(pause)
            t = time.perf_counter()
            await c.run(["true"], tool=tool)
            samples.append(time.perf_counter() - t)
    return samples


async def stream_bytes(target: str, argv: Sequence[str], tool: str = "shell") -> tuple[float, int]:
    """Seconds to stream ``argv``'s output through execgate, and the stdout bytes received."""
    received = 0
    async with AsyncClient(target, token=API_KEY) as c:
        await c.run(["true"], tool=tool)
        t = time.perf_counter()
        async for event in c.stream(argv, tool=tool):
            if isinstance(event, OutputChunk) and event.stream == "stdout":
                received += len(event.data)
        return time.perf_counter() - t, received


async def concurrent_runs(target: str, argv: Sequence[str], count: int,
                          tool: str = "shell") -> float:
    """Seconds for ``count`` calls of ``argv`` made at once on one channel to all end."""
    async with AsyncClient(target, token=API_KEY) as c:
        await c.run(["true"], tool=tool)
        t = time.perf_counter()
        results = await asyncio.gather(*(c.run(argv, tool=tool) for _ in range(count)))
        elapsed = time.perf_counter() - t
    failed = [r for r in results if r.exit_code != 0]
    assert not failed, failed[0]
    return elapsed


async def first_byte(target: str, argv: Sequence[str], tool: str = "shell") -> float:
    """Seconds from asking execgate to run ``argv`` to its first output event."""
    async with AsyncClient(target, token=API_KEY) as c:
        await c.run(["true"], tool=tool)
        t = time.perf_counter()
        first = 0.0
        async for event in c.stream(argv, tool=tool):
            if isinstance(event, OutputChunk) and not first:
                first = time.perf_counter() - t
        return first


@dataclass
class RssPeak:
    """A process's RSS before a measurement and the most it reached during it, in bytes."""

    baseline: int
    peak: int

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@contextmanager
def rss_peak(pid: int) -> Iterator[RssPeak]:
    """Sample process ``pid``'s RSS every 10 ms while the block runs (a thread: the block
    may be a blocking call)."""
    proc = psutil.Process(pid)
    rss = proc.memory_info().rss
    result = RssPeak(rss, rss)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result.peak = max(result.peak, proc.memory_info().rss)
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result.peak = max(result.peak, proc.memory_info().rss)
