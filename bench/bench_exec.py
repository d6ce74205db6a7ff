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
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import (
    async_round_trips,
    concurrent_runs,
    local_pipe,
    local_true,
    percentile,
    rss_peak,
    stream_bytes,
)
from execgate.client import Client
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
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    return (f"p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms  "
            f"mean {statistics.mean(samples) * 1e3:.3f} ms")


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        daemon = start_daemon(Path(root), POLICY, log=Path(root) / "execgated.log")
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

            flood = ["head", "-c", str(BYTES), "/dev/zero"]
            with rss_peak(daemon.proc.pid) as rss:
                elapsed, received = asyncio.run(stream_bytes(daemon.target, flood))
            assert received == BYTES, received
            pipe, piped = local_pipe(flood)
            assert piped == BYTES, piped
            print(f"100 MB stdout through execgate            : {BYTES / elapsed / 1e6:.0f} MB/s "
                  f"({elapsed:.3f} s); daemon RSS +{rss.growth / 2**20:.1f} MiB")
            print(f"100 MB from a local pipe                  : {BYTES / pipe / 1e6:.0f} MB/s "
                  f"({pipe:.3f} s)")
            sleeps = asyncio.run(concurrent_runs(daemon.target, ["sleep", "0.5"], 8))
            print(f"8 concurrent `sleep 0.5`                  : {sleeps:.3f} s")
            before = (proc.memory_info().rss, proc.num_fds())
            asyncio.run(concurrent_runs(daemon.target, ["sleep", "0.2"], 50))
            time.sleep(0.5)  # a benchmark may wait; the helper reaps idle inits lazily
            after = (proc.memory_info().rss, proc.num_fds())
            print(f"50 concurrent sandboxed `sleep 0.2`       : all succeeded; daemon RSS "
                  f"{before[0] / 2**20:.1f} -> {after[0] / 2**20:.1f} MiB, fds {before[1]} -> "
                  f"{after[1]}")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
