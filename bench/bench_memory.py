"""The daemon's memory per accepted call (run by hand, never in the tests).

    .venv/bin/python bench/bench_memory.py [--calls 50000] [--tool read_file|true]
                                           [--concurrency 4] [--warmup 0.2]

Runs ``--calls`` accepted calls against a real daemon on loopback and samples the daemon's
RSS as they go. A daemon that keeps nothing per call levels off once its allocator is warm;
one that leaks grows in a straight line. The figure reported is the slope of a least-squares
line through the samples after the first ``--warmup`` share of the calls: bytes per call.

``read_file`` (the default) goes through the whole call path (authentication, policy, the
stream, the run and its audit) without starting a process, so it is quick enough for 50k
calls; ``true`` runs a confined command each call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from execgate.client import AsyncClient
from tests.conftest import API_KEY, start_daemon

POLICY = """\
version: "2"
tools:
  shell:
    type: command
    working_directory: ./workspace
    allowed_commands: ["true"]
  read_file:
    type: function
    working_directory: ./workspace
agents:
  bench:
    tools: [shell, read_file]
server:
  auth:
    enabled: true
    api_keys: [{name: bench, key: "${TEST_API_KEY}"}]
logger:
  level: error
  format: json
"""
SAMPLES = 200


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of (calls, rss) points: bytes per call."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance


async def drive(target: str, calls: int, tool: str, concurrency: int,
                daemon: psutil.Process) -> list[tuple[int, int]]:
    """Make ``calls`` calls, ``concurrency`` at a time; (calls done, daemon RSS) samples."""
    every = max(1, calls // SAMPLES)
    done = 0
    points: list[tuple[int, int]] = []

    async def worker(client: AsyncClient, share: int) -> None:
        nonlocal done
        for _ in range(share):
            if tool == "true":
                result = await client.run(["true"], agent="bench", tool="shell")
            else:
                result = await client.call("read_file", agent="bench", path="small.txt")
            assert result.exit_code == 0, result
            done += 1
            if done % every == 0:
                points.append((done, daemon.memory_info().rss))

    async with AsyncClient(target, token=API_KEY) as client:
        shares = [calls // concurrency + (i < calls % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(worker(client, share) for share in shares))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--tool", choices=("read_file", "true"), default="read_file")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="share of the calls left out of the fit (allocator warm-up)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "workspace").mkdir()
        (root / "workspace" / "small.txt").write_text("hello\n")
        daemon = start_daemon(root, POLICY)
        try:
            process = psutil.Process(daemon.proc.pid)
            before = process.memory_info().rss
            points = asyncio.run(drive(daemon.target, args.calls, args.tool,
                                       args.concurrency, process))
        finally:
            daemon.stop()
    fitted = [p for p in points if p[0] > args.calls * args.warmup]
    print(f"{args.calls} {args.tool} calls, {args.concurrency} at a time")
    print(f"daemon RSS: {before / 2**20:.1f} MiB at start, {fitted[0][1] / 2**20:.1f} MiB "
          f"after warm-up, {points[-1][1] / 2**20:.1f} MiB at the end")
    print(f"slope after warm-up: {slope(fitted):.1f} bytes/call")


if __name__ == "__main__":
    main()
