"""What the audit file (fsync interval) and metrics add to the ``true`` round trip (run by
hand, never in the tests). Target: at most 10%.

    .venv/bin/python bench/bench_observe.py

Two daemons side by side in one run, the same policy but for the observers: off, and on
(audit file with ``fsync: interval`` plus metrics). Calls alternate between them in rounds,
so drift on the machine falls on both; the median of each is compared. Tracing is not in
the measure: spans are not exported yet.

Measured here (2 cores, shared): off 12.0 ms, on 11.6 ms, -3.0% (within the noise).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import TEST_POLICY, start_daemon

ROUNDS, CALLS = 10, 50
ON = TEST_POLICY.replace(
    "server:\n", "server:\n  observability: {metrics: {enabled: true, listen: "
                 "'127.0.0.1:0'}}\n", 1).replace(
    "logger:\n", "logger:\n  audit_file: {path: ./audit.jsonl, fsync: interval}\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as off_root, tempfile.TemporaryDirectory() as on_root:
        daemons = {"off": start_daemon(Path(off_root), TEST_POLICY),
                   "on": start_daemon(Path(on_root), ON)}
        times: dict[str, list[float]] = {name: [] for name in daemons}
        try:
            clients = {name: d.client() for name, d in daemons.items()}
            for client in clients.values():
                for _ in range(20):  # warm-up: the pooled inits, the channel
                    client.run(["true"], agent="dev")
            for _ in range(ROUNDS):
                for name, client in clients.items():
                    for _ in range(CALLS):
                        start = time.perf_counter()
                        client.run(["true"], agent="dev")
                        times[name].append(time.perf_counter() - start)
            for client in clients.values():
                client.close()
        finally:
            for d in daemons.values():
                d.stop()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"true round trip, median of {ROUNDS * CALLS}: observers off {off * 1e3:.3f} ms, "
          f"on {on * 1e3:.3f} ms: {100 * (on - off) / off:+.1f}% (target: at most +10%)")


if __name__ == "__main__":
    main()
