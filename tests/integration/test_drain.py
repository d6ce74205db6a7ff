"""SIGTERM drains: no new calls, running ones finish up to server.drain_timeout, the rest are
killed with their whole trees, and the daemon exits 0 leaving no process behind."""

from __future__ import annotations

import json
import queue
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from execgate.client import Event, Exited, ExitReason, OutputChunk, Started, UnavailableError
from tests.conftest import Daemon, start_daemon

DRAINING = {"DRAIN_TIMEOUT": "3s"}  # server.drain_timeout of the test policy
SLOW_DRAIN = {"DRAIN_TIMEOUT": "10m"}
# A child in the background too: killing a job kills its whole tree.
JOB = ["sh", "-c", "sleep 300 >/dev/null & echo up; cat; echo done"]


def _draining(d: Daemon) -> None:
    """Wait until the daemon has said it drains (health is NOT_SERVING by then)."""
    def said() -> bool:
        for line in list(d.stderr_lines):
            try:
                if json.loads(line).get("event") == "server.draining":
                    return True
            except ValueError:
                continue
        return False

    with d.said:
        assert d.said.wait_for(said, timeout=30)


def _start_job(client_streams: list[Iterator[Event]], d: Daemon,
               stdin: queue.Queue[bytes | None]) -> None:
    events = d.client().stream(JOB, agent="dev", stdin=iter(stdin.get, None))
    assert isinstance(next(events), Started)
    assert isinstance(next(events), OutputChunk)  # "up": the background child exists
    client_streams.append(events)


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-any-return]
            health_pb2.HealthCheckRequest(), timeout=30).status


@pytest.fixture
def draining(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, env=DRAINING)
    yield d
    d.stop()


def test_sigterm_drains_running_jobs_then_kills_the_rest(draining: Daemon) -> None:
    d = draining
    streams: list[Iterator[Event]] = []
    inputs: list[queue.Queue[bytes | None]] = [queue.Queue() for _ in range(3)]
    for stdin in inputs:
        _start_job(streams, d, stdin)
    processes = psutil.Process(d.proc.pid).children(recursive=True)
    d.proc.send_signal(signal.SIGTERM)
    _draining(d)
    assert _health(d.target) == health_pb2.HealthCheckResponse.NOT_SERVING
    with d.client() as client, pytest.raises(UnavailableError, match="draining"):
        client.run(["true"], agent="dev")
    for stdin in inputs[:2]:  # these two end by themselves within the drain
        stdin.put(None)
    finished = [list(events)[-1] for events in streams]
    assert all(isinstance(e, Exited) for e in finished)
    assert [e.reason for e in finished if isinstance(e, Exited)] == [
        ExitReason.EXITED, ExitReason.EXITED, ExitReason.DAEMON_STOPPING]
    assert d.proc.wait(timeout=30) == 0
    assert [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def test_a_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    """The drain would last ten minutes: the second signal does not wait for it."""
    d = start_daemon(tmp_path, env=SLOW_DRAIN)
    try:
        streams: list[Iterator[Event]] = []
        _start_job(streams, d, queue.Queue())
        d.proc.send_signal(signal.SIGTERM)
        _draining(d)
        d.proc.send_signal(signal.SIGTERM)
        last = list(streams[0])[-1]
        assert isinstance(last, Exited) and last.reason is ExitReason.DAEMON_STOPPING
        assert d.proc.wait(timeout=30) == 0
    finally:
        d.stop()


def test_sigint_during_a_drain_stops_at_once(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, env=SLOW_DRAIN)
    try:
        streams: list[Iterator[Event]] = []
        _start_job(streams, d, queue.Queue())
        d.proc.send_signal(signal.SIGTERM)
        _draining(d)
        d.proc.send_signal(signal.SIGINT)
        last = list(streams[0])[-1]
        assert isinstance(last, Exited) and last.reason is ExitReason.DAEMON_STOPPING
        assert d.proc.wait(timeout=30) == 0
    finally:
        d.stop()


def test_a_drain_with_nothing_running_exits_at_once(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, env=SLOW_DRAIN)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 0
    d.stop()
