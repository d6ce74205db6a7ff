"""execgate's core benchmarks, side by side in one run (run by hand, never in the tests).

    .venv/bin/python bench/bench_exec.py [--calls 1000]

1. `true` round trip through a real daemon on loopback (warm channel, AsyncClient and
   Client), against subprocess.run(['/bin/true']) in this process; with every default
   sandbox layer, without the cgroup layer, and with every layer off.
2. 100 MB of stdout through execgate, against reading the same from a local pipe; the
   daemon's RSS growth is sampled while it streams.
3. 8 concurrent `sleep 0.5` calls from one client: total wall time.
4. 50 concurrent sandboxed jobs: all succeed; the daemon's RSS and open fds before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from execgate.client import AsyncClient, Client
from tests.conftest import API_KEY, start_daemon

POLICY = """\
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_output_bytes: 512MiB
    allowed_commands: ["true", head, sleep]
  no_cgroup:
    type: command
    working_directory: ./workspace
    allowed_commands: ["true"]
    sandbox: {cgroup: off}
  unconfined:
    type: command
    working_directory: ./workspace
    allowed_commands: ["true"]
    sandbox: {cgroup: off, namespaces: off, view: off, filesystem: off, network: true,
              run_as: root}
agents:
  bench:
    tools: [shell, no_cgroup, unconfined]
server:
  auth:
    enabled: true
    api_keys: [{name: bench, key: "${TEST_API_KEY}"}]
logger:
  level: info
  format: json
"""
BYTES = 100_000_000


def percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    p50, p99 = s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms  mean {statistics.mean(s) * 1e3:.3f} ms"


async def async_round_trips(target: str, calls: int, tool: str = "shell",
                            pause: float = 0.0) -> list[float]:
    """Round trips back to back, or with ``pause`` seconds between calls (a caller that
    does something with each result, as agents do)."""
    async with AsyncClient(target, token=API_KEY) as c:
        for _ in range(50):
            await c.run(["true"], tool=tool)
        samples = []
        for _ in range(calls):
            if pause:
                await asyncio.sleep(pause)
            t = time.perf_counter()
            await c.run(["true"], tool=tool)
            samples.append(time.perf_counter() - t)
    return samples


def sync_round_trips(target: str, calls: int) -> list[float]:
    with Client(target, token=API_KEY) as c:
        for _ in range(50):
            c.run(["true"], tool="shell")
        samples = []
        for _ in range(calls):
            t = time.perf_counter()
            c.run(["true"], tool="shell")
            samples.append(time.perf_counter() - t)
    return samples


def local_true(calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        samples.append(time.perf_counter() - t)
    return samples


async def stream_bytes(target: str) -> tuple[float, int]:
    from execgate.client import OutputChunk
    received = 0
    async with AsyncClient(target, token=API_KEY) as c:
        t = time.perf_counter()
        async for event in c.stream(["head", "-c", str(BYTES), "/dev/zero"], tool="shell"):
            if isinstance(event, OutputChunk):
                received += len(event.data)
        return time.perf_counter() - t, received


def local_pipe() -> float:
    t = time.perf_counter()
    proc = subprocess.Popen(["head", "-c", str(BYTES), "/dev/zero"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    received = 0
    while chunk := os.read(proc.stdout.fileno(), 65536):
        received += len(chunk)
    proc.wait()
    assert received == BYTES
    return time.perf_counter() - t


async def concurrent_sleeps(target: str) -> float:
    async with AsyncClient(target, token=API_KEY) as c:
        await c.run(["true"], tool="shell")
        t = time.perf_counter()
        results = await asyncio.gather(*(c.run(["sleep", "0.5"], tool="shell")
                                         for _ in range(8)))
        assert all(r.exit_code == 0 for r in results)
        return time.perf_counter() - t


async def fifty_concurrent(target: str) -> int:
    async with AsyncClient(target, token=API_KEY) as c:
        results = await asyncio.gather(*(c.run(["sleep", "0.2"], tool="shell")
                                         for _ in range(50)))
        return sum(r.exit_code == 0 for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        daemon = start_daemon(Path(root), POLICY)
        try:
            proc = psutil.Process(daemon.proc.pid)
            print(f"machine: {os.cpu_count()} cores, Linux {os.uname().release}")
            local = local_true(args.calls)
            print(f"subprocess.run(['/bin/true']) in-process : {percentiles(local)}")
            a = asyncio.run(async_round_trips(daemon.target, args.calls))
            print(f"execgate `true`, all layers (AsyncClient) : {percentiles(a)}")
            s = sync_round_trips(daemon.target, args.calls)
            print(f"execgate `true`, all layers (Client)      : {percentiles(s)}")
            n = asyncio.run(async_round_trips(daemon.target, args.calls, "no_cgroup"))
            print(f"execgate `true`, no cgroup layer          : {percentiles(n)}")
            u = asyncio.run(async_round_trips(daemon.target, args.calls, "unconfined"))
            print(f"execgate `true`, every layer off          : {percentiles(u)}")
            ap = asyncio.run(async_round_trips(daemon.target, args.calls, pause=0.005))
            print(f"  all layers, 5 ms between calls          : {percentiles(ap)}")
            up = asyncio.run(async_round_trips(daemon.target, args.calls, "unconfined", 0.005))
            print(f"  every layer off, 5 ms between calls     : {percentiles(up)}")
            p50 = {k: sorted(v)[len(v) // 2] for k, v in (("a", a), ("u", u), ("l", local))}
            print(f"sandbox cost p50 (all layers - none)      : "
                  f"{(p50['a'] - p50['u']) * 1e3:.3f} ms; all layers / local: "
                  f"{p50['a'] / p50['l']:.2f}x")

            baseline = proc.memory_info().rss
            peak = [baseline]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], proc.memory_info().rss)
                    done.wait(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            elapsed, received = asyncio.run(stream_bytes(daemon.target))
            done.set()
            sampler.join()
            assert received == BYTES, received
            pipe = local_pipe()
            print(f"100 MB stdout through execgate            : {BYTES / elapsed / 1e6:.0f} MB/s "
                  f"({elapsed:.3f} s); daemon RSS +{(peak[0] - baseline) / 2**20:.1f} MiB")
            print(f"100 MB from a local pipe                  : {BYTES / pipe / 1e6:.0f} MB/s "
                  f"({pipe:.3f} s)")
            print(f"8 concurrent `sleep 0.5`                  : "
                  f"{asyncio.run(concurrent_sleeps(daemon.target)):.3f} s")
            before = (proc.memory_info().rss, proc.num_fds())
            ok = asyncio.run(fifty_concurrent(daemon.target))
            time.sleep(0.5)  # a benchmark may wait; the helper reaps idle inits lazily
            after = (proc.memory_info().rss, proc.num_fds())
            print(f"50 concurrent sandboxed `sleep 0.2`       : {ok}/50 succeeded; daemon RSS "
                  f"{before[0] / 2**20:.1f} -> {after[0] / 2**20:.1f} MiB, fds {before[1]} -> "
                  f"{after[1]}")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
