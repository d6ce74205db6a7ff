"""The daemon's memory per call, one kind of call at a time (run by hand, never in the tests).

    .venv/bin/python bench/bench_memory.py [--kind quick|function|...|all] [--calls 20000]
                                           [--concurrency 4] [--warmup 2000] [--probe]
                                           [--frames N] [--env NAME=VALUE ...]

Each kind is one of the soak's calls (bench/soak.py's MIX: quick, function, flood, timeout,
denial, approved, refused, cancelled, dropped, detached), made by ``--concurrency`` clients
against a real daemon on loopback with the soak's policy. ``--warmup`` calls first warm the
allocator up; once every run has ended and been forgotten (the policy keeps finished runs
2 s) the daemon's RSS is noted, then ``--calls`` calls, then the RSS again once everything
settled: their difference over the calls is the figure, bytes per call. The slope of a
least-squares line through RSS samples taken during the calls is printed beside it.

``--probe`` loads bench/_memprobe into the daemon, which tells where the bytes went: glibc's
heap in use (``mallinfo2``: gRPC's core, and Python objects over 512 bytes) against the
Python heap (tracemalloc, with ``--frames N``; slow), live objects by type, and what
``malloc_trim(0)`` gives back at the end (free memory the allocator held: fragmentation,
not a leak). ``--env MALLOC_ARENA_MAX=2`` and the like go to the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import soak
from execgate.client import Client
from tests.conftest import API_KEY, Daemon, start_daemon

KINDS = {action.__name__: action for action in soak.MIX}
SAMPLES = 100
PROBE = Path(__file__).resolve().parent / "_memprobe"


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of (calls, rss) points: bytes per call."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance if variance else 0.0


def drive(target: str, kind: str, calls: int, concurrency: int,
          daemon: psutil.Process) -> tuple[list[tuple[int, int]], soak.Tally]:
    """Make ``calls`` calls of ``kind``, ``concurrency`` at a time; (calls done, daemon RSS)
    samples, and what the calls saw."""
    action = KINDS[kind]
    tally = soak.Tally()
    every = max(1, calls // SAMPLES)
    done = 0
    lock = threading.Lock()
    points: list[tuple[int, int]] = []

    def worker(n: int) -> None:
        nonlocal done
        rng = random.Random(n)
        with Client(target, token=API_KEY) as client:
            while True:
                with lock:
                    if done >= calls:
                        return
                    done += 1
                    if done % every == 0:
                        points.append((done, daemon.memory_info().rss))
                try:
                    action(client, target, rng, tally)
                except Exception as exc:  # recorded: a bench of failing calls measures nothing
                    tally.expect(kind, False, exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return points, tally


@dataclass
class Measured:
    """One kind's figures."""

    kind: str
    calls: int
    rss_before: int
    rss_after: int
    fitted: float
    unexpected: list[str]
    probes: list[dict[str, Any]]
    """The probe's lines: after warm-up, at the end, and around a malloc_trim(0)."""

    @property
    def per_call(self) -> float:
        """RSS growth over the measured calls, settled, in bytes per call."""
        return (self.rss_after - self.rss_before) / self.calls

    def text(self) -> str:
        """The figures, and the probe's breakdown when it ran."""
        lines = [f"{self.kind}: {self.calls} calls, RSS {self.rss_before / 2**20:.1f} -> "
                 f"{self.rss_after / 2**20:.1f} MiB: {self.per_call:.0f} B/call settled, "
                 f"{self.fitted:.0f} B/call slope while calling"]
        lines += [f"  UNEXPECTED {u}" for u in self.unexpected[:5]]
        if len(self.probes) == 3:
            lines += _breakdown(*self.probes, self.calls)
        return "\n".join(lines)


def _breakdown(before: dict[str, Any], after: dict[str, Any], trimmed: dict[str, Any],
               calls: int) -> list[str]:
    def per(key: str, a: dict[str, Any], b: dict[str, Any]) -> str:
        return f"{(b.get(key, 0) - a.get(key, 0)) / calls:+.0f}"

    ma, mb = before["mallinfo2"], after["mallinfo2"]
    out = [f"  per call: malloc in use {per('uordblks', ma, mb)} B, kept free "
           f"{per('fordblks', ma, mb)} B; live objects "
           f"{(after['objects'] - before['objects']) / calls:+.2f}"
           + (f"; traced Python heap {per('traced', before, after)} B"
              if "traced" in after else ""),
           f"  at the end a full collection found {after['collected']} objects of cyclic "
           f"garbage holding {after['calls_before_collect'] - after['calls']} gRPC calls "
           f"(RSS {after['rss_before_collect'] / 2**20:.1f} -> {after['rss'] / 2**20:.1f} MiB)",
           f"  malloc_trim(0) at the end: RSS {trimmed['rss'] / 2**20:.1f} -> "
           f"{trimmed['rss_after_trim'] / 2**20:.1f} MiB in "
           f"{trimmed['trim_seconds'] * 1e3:.1f} ms"]
    for key, label in (("types", "objects by type"), ("tracemalloc", "Python heap by line")):
        if key in after:
            grown = Counter({name: size - before[key].get(name, 0)
                             for name, size in after[key].items()})
            top = [f"{name} {size:+d}" for name, size in grown.most_common(8) if size > 0]
            out.append(f"  {label}, grown: {'; '.join(top)}")
    out += [f"  held by: {' <- '.join(chain)}" for chain in after.get("holders", [])]
    return out


def probed(env: dict[str, str] | None = None, frames: int = 0,
           holders: str = "") -> dict[str, str]:
    """``env`` for a daemon that loads bench/_memprobe (``frames``: trace the Python heap;
    ``holders``: tell what holds a few objects of that type)."""
    return {**(env or {}), "EXECGATE_MEMPROBE": "1",
            "EXECGATE_MEMPROBE_FRAMES": str(frames), "EXECGATE_MEMPROBE_HOLDERS": holders,
            "PYTHONPATH": os.pathsep.join([str(PROBE), os.environ.get("PYTHONPATH", "")])}


def probe(d: Daemon, sig: int = signal.SIGUSR2) -> dict[str, Any]:
    """Ask a probed daemon for a line (SIGUSR1: after a malloc_trim) and wait for it."""
    def lines() -> list[dict[str, Any]]:
        found = []
        for line in list(d.stderr_lines):
            if line.startswith('{"memprobe"'):
                found.append(json.loads(line)["memprobe"])
        return found

    count = len(lines())
    with d.said:
        d.proc.send_signal(sig)
        d.said.wait_for(lambda: len(lines()) > count, timeout=120)
    return lines()[count]


def measure(root: Path, kind: str, calls: int, warmup: int, concurrency: int,
            with_probe: bool, frames: int, holders: str, env: dict[str, str]) -> Measured:
    """One daemon, ``warmup`` then ``calls`` calls of ``kind``."""
    if with_probe:
        env = probed(env, frames, holders)
    d = start_daemon(root, soak.POLICY, env)
    try:
        (d.workspace / "small.txt").write_text("hello\n")
        daemon = psutil.Process(d.proc.pid)
        drive(d.target, kind, warmup, concurrency, daemon)
        parents = soak._cgroup_parents(daemon)
        before = soak.settle(d, daemon, parents).rss
        probes = [probe(d)] if with_probe else []
        points, tally = drive(d.target, kind, calls, concurrency, daemon)
        after = soak.settle(d, daemon, parents).rss
        if with_probe:
            probes += [probe(d), probe(d, signal.SIGUSR1)]
        errors = d.errors()
    finally:
        d.stop()
    return Measured(kind, calls, before, after, slope(points), tally.unexpected + errors,
                    probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--probe", action="store_true",
                        help="load bench/_memprobe into the daemon: where the bytes went")
    parser.add_argument("--frames", type=int, default=0,
                        help="with --probe: trace the Python heap, N frames deep (slow)")
    parser.add_argument("--holders", default="", metavar="TYPE",
                        help="with --probe: what holds a few live objects of TYPE")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in the daemon's environment (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    for kind in KINDS if args.kind == "all" else [args.kind]:
        with tempfile.TemporaryDirectory(prefix="execgate-memory-") as tmp:
            os.chmod(tmp, 0o755)  # jobs run as nobody when this runs as root
            measured = measure(Path(tmp), kind, args.calls, args.warmup, args.concurrency,
                               args.probe, args.frames, args.holders, env)
        print(measured.text(), flush=True)


if __name__ == "__main__":
    main()
