"""Fairness between principals, and memory per detached run (run by hand, never in tests).

    .venv/bin/python bench/bench_fairness.py [--calls 200] [--flood-bytes 1073741824]
                                             [--detached 20]

1. p99 latency of principal B's ``true``: idle, then while principal A floods 1 GB of
   output through the daemon, then while A runs a fork-heavy job. The target: under 10x.
2. The daemon's RSS per detached run nobody reads, each having written twice its replay
   buffer: bounded by ``runs.replay_bytes``, whatever the run writes.

On the 2-core development machine, shared with other test runs at the time (so the idle
figure is high): p99 idle 35.9 ms, during a 1.1 GB flood 69.1 ms (1.9x), during a job
forking 3000 processes 28.7 ms (0.8x); 4.12 MiB of daemon RSS per detached run that wrote
8 MiB nobody read, with runs.replay_bytes at 4 MiB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from execgate.client import Client, OutputChunk
from tests.conftest import start_daemon

OTHER_KEY = "bench-other-key-0123456789"
REPLAY = 4 * 1024 * 1024
POLICY = f"""\
version: "2"
sandbox:
  cgroup: optional
runs:
  replay_bytes: {REPLAY}
  max_detached_per_principal: 64
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_execution_time: 10m
    max_output_bytes: 4GiB
    allowed_commands: ["true", head, sh, sleep, python3]
agents:
  bench:
    tools: [shell]
server:
  auth:
    enabled: true
    api_keys:
      - {{name: flooder, key: "${{TEST_API_KEY}}"}}
      - {{name: neighbour, key: "{OTHER_KEY}"}}
logger:
  level: error
  format: json
"""


def p99(client: Client, calls: int) -> float:
    """p99 seconds of ``true`` over ``calls`` sequential calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        client.run(["true"], agent="bench")
        times.append(time.perf_counter() - start)
    return statistics.quantiles(times, n=100)[98]


def during(load: Callable[[], None], measure: Callable[[], float]) -> float:
    """``measure()`` while ``load()`` runs in a thread (started first)."""
    thread = threading.Thread(target=load)
    thread.start()
    try:
        return measure()
    finally:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--flood-bytes", type=int, default=1024**3)
    parser.add_argument("--detached", type=int, default=20)
    args = parser.parse_args()
    daemon = start_daemon(Path(tempfile.mkdtemp()), POLICY)
    try:
        with daemon.client() as flooder, daemon.client(OTHER_KEY) as neighbour:
            idle = p99(neighbour, args.calls)

            def flood() -> None:
                got = 0
                for event in flooder.stream(["head", "-c", str(args.flood_bytes), "/dev/zero"],
                                            agent="bench"):
                    if isinstance(event, OutputChunk):
                        got += len(event.data)
                assert got == args.flood_bytes

            def forks() -> None:
                flooder.run(["sh", "-c", "i=0; while [ $i -lt 3000 ]; do /bin/true; "
                                         "i=$((i+1)); done"], agent="bench")

            flooded = during(flood, lambda: p99(neighbour, args.calls))
            forked = during(forks, lambda: p99(neighbour, args.calls))
            print(f"p99 of the neighbour's true: idle {idle * 1e3:.2f} ms, during a "
                  f"{args.flood_bytes / 1e9:.1f} GB flood {flooded * 1e3:.2f} ms "
                  f"({flooded / idle:.1f}x), during a fork-heavy job {forked * 1e3:.2f} ms "
                  f"({forked / idle:.1f}x)")

            process = psutil.Process(daemon.proc.pid)
            before = process.memory_info().rss
            write = (f"import sys, time; sys.stdout.buffer.write(b'x' * {2 * REPLAY}); "
                     "sys.stdout.flush(); time.sleep(600)")
            handles = [flooder.start(["python3", "-c", write], agent="bench")
                       for _ in range(args.detached)]
            for handle in handles:  # each has written all of it: its dropped count says so
                while next(r for r in flooder.runs() if r.run_id == handle.id
                           ).stdout_bytes < 2 * REPLAY:
                    time.sleep(0.1)
            per_run = (process.memory_info().rss - before) / args.detached
            print(f"daemon RSS per detached run that wrote {2 * REPLAY >> 20} MiB unread: "
                  f"{per_run / 2**20:.2f} MiB (runs.replay_bytes {REPLAY >> 20} MiB)")
            for handle in handles:
                handle.cancel()
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
