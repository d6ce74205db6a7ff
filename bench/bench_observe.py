"""What the observers add to the ``true`` round trip (run by hand, never in the tests).
Target: the audit file (fsync ``interval``), metrics and tracing on together cost at most
10% of it.

    .venv/bin/python bench/bench_observe.py

Three daemons side by side in one run, the same policy but for the observers: all off; the
audit file with ``fsync: interval`` plus metrics; and those plus tracing, exporting every
span to an OTLP collector in this process (batches as the SDK's defaults send them). Calls
alternate between the daemons in blocks, so drift on the machine falls on all of them; each
of three rounds compares medians, and the median of the rounds is the figure, the rounds'
spread its noise.

Measured here (2 cores, shared with other test runs; see the commit for the figures).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from execgate.daemon.audit import AuditRecord, CallContext
from execgate.daemon.tracing import TRACED_RPC, Tracing
from tests.conftest import TEST_POLICY, Daemon, start_daemon
from tests.otlp import Collector

ROUNDS, BLOCKS, CALLS = 3, 15, 20
AUDIT_AND_METRICS = TEST_POLICY.replace(
    "server:\n", "server:\n  observability: {metrics: {enabled: true, listen: "
                 "'127.0.0.1:0'}}\n", 1).replace(
    "logger:\n", "logger:\n  audit_file: {path: ./audit.jsonl, fsync: interval}\n")


def _traced(port: int) -> str:
    return AUDIT_AND_METRICS.replace(
        "{metrics: {enabled: true, listen: '127.0.0.1:0'}}",
        "{metrics: {enabled: true, listen: '127.0.0.1:0'}, "
        f"tracing: {{enabled: true, endpoint: 'http://127.0.0.1:{port}'}}}}", 1)


def _round(daemons: dict[str, Daemon]) -> dict[str, float]:
    """One round: blocks of calls to each daemon in turn; the median round trip of each."""
    times: dict[str, list[float]] = {name: [] for name in daemons}
    clients = {name: d.client() for name, d in daemons.items()}
    try:
        for _ in range(BLOCKS):
            for name, client in clients.items():
                for _ in range(CALLS):
                    start = time.perf_counter()
                    client.run(["true"], agent="dev")
                    times[name].append(time.perf_counter() - start)
    finally:
        for client in clients.values():
            client.close()
    return {name: statistics.median(t) for name, t in times.items()}


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracing_cpu(calls: int = 400) -> float:
    """CPU seconds the tracing observer spends on one allowed call's records, on the
    daemon's event loop (the export is another thread's): steadier than a round trip.
    Fewer calls than the batch queue holds spans (2048), so that none is dropped."""
    tracing = Tracing("bench", None, _Discard())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    run = {"agent": "dev", "tool": "shell", "executable": "/usr/bin/true",
           "spawn_seconds": 0.001}
    exited = {"agent": "dev", "tool": "shell", "reason": "EXITED", "exit_code": 0,
              "signal": None, "stdout_bytes": 0, "stderr_bytes": 0, "dropped_bytes": 0,
              "success": True}
    start = time.thread_time()
    for i in range(calls):
        call = CallContext(TRACED_RPC, "ipv4:127.0.0.1:1", traceparent=parent)
        tracing.observe(AuditRecord("auth.succeeded", "info", {"auth": "api_key"}, call))
        tracing.observe(AuditRecord("run.started", "info", {**run, "run_id": str(i)}, call))
        tracing.observe(AuditRecord("run.exited", "info", {**exited, "run_id": str(i)}, call))
    spent = time.thread_time() - start
    tracing.close()
    return spent / calls


def main() -> None:
    collector = Collector()
    roots = [tempfile.TemporaryDirectory() for _ in range(3)]
    daemons: dict[str, Daemon] = {}
    try:
        for (name, policy), root in zip({
                "off": TEST_POLICY, "audit+metrics": AUDIT_AND_METRICS,
                "audit+metrics+tracing": _traced(collector.port)}.items(), roots, strict=True):
            daemons[name] = start_daemon(Path(root.name), policy)
        for d in daemons.values():
            with d.client() as client:
                for _ in range(20):  # warm-up: the pooled inits, the channel
                    client.run(["true"], agent="dev")
        rounds = [_round(daemons) for _ in range(ROUNDS)]
    finally:
        for d in daemons.values():
            d.stop()  # the traced daemon flushes its last spans to the collector
        collector.stop()
        for root in roots:
            root.cleanup()
    calls = ROUNDS * BLOCKS * CALLS
    print(f"true round trip, median of {BLOCKS * CALLS} calls per daemon per round, "
          f"{ROUNDS} rounds:")
    for name in daemons:
        overheads = [100 * (r[name] - r["off"]) / r["off"] for r in rounds]
        print(f"  {name:>22}: " + ", ".join(f"{r[name] * 1e3:.3f} ms" for r in rounds)
              + ("" if name == "off" else
                 f"  overhead {statistics.median(overheads):+.1f}% (rounds "
                 + ", ".join(f"{o:+.1f}%" for o in overheads) + ")"))
    print(f"spans received: {len(collector.spans)} for {calls + 20} traced calls "
          "(five each, with no approval); target: at most +10% with everything on")
    cpu = statistics.median(tracing_cpu() for _ in range(ROUNDS))
    off = statistics.median(r["off"] for r in rounds)
    print(f"tracing observer's CPU on the event loop: {cpu * 1e6:.0f} us per call, "
          f"{100 * cpu / off:.1f}% of the off round trip")


if __name__ == "__main__":
    main()
