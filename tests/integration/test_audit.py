"""The audit is a truthful record: every started run ends in exactly one run.exited, and
the record is written whatever the log level."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from execgate.client import Client, OutputChunk, PolicyDeniedError, Started
from execgate.v1 import exec_pb2
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon


def _started(events: Iterator[object]) -> Started:
    for event in events:
        if isinstance(event, Started):
            return event
    raise AssertionError("the call never started")


def test_a_run_cancelled_by_the_caller_is_recorded_as_cancelled(client: Client,
                                                                daemon: Daemon) -> None:
    events = client.stream(["sh", "-c", "echo up; exec sleep 60"], agent="dev")
    run_id = _started(events).run_id
    assert isinstance(next(events), OutputChunk)  # the command is running
    events.close()  # the caller goes away
    exited = daemon.audit("run.exited", run_id=run_id)
    assert [e["reason"] for e in exited] == ["CANCELLED"]


def _break_the_protocol_mid_run(daemon: Daemon) -> tuple[grpc.RpcError, str]:
    """Start a command, and once it runs send a signal number no system has."""
    outbox: queue.Queue[exec_pb2.ExecuteRequest | None] = queue.Queue()
    outbox.put(exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
        agent="dev", argv=["sh", "-c", "echo up; exec sleep 60"])))
    run_id = ""
    with grpc.insecure_channel(daemon.target) as channel:
        execute = channel.stream_stream(
            "/execgate.v1.ExecService/Execute",
            request_serializer=exec_pb2.ExecuteRequest.SerializeToString,
            response_deserializer=exec_pb2.ExecuteResponse.FromString)
        call = execute(iter(outbox.get, None),
                       metadata=(("authorization", f"Bearer {API_KEY}"),))
        try:
            for response in call:
                if response.WhichOneof("response") == "accepted":
                    run_id = response.accepted.run_id
                elif response.WhichOneof("response") == "output":
                    outbox.put(exec_pb2.ExecuteRequest(signal=exec_pb2.SendSignal(signal=999)))
        except grpc.RpcError as error:
            return error, run_id
        finally:
            outbox.put(None)
    raise AssertionError("the daemon accepted a signal number no system has")


def test_a_run_ended_by_a_protocol_error_is_recorded_once(daemon: Daemon) -> None:
    error, run_id = _break_the_protocol_mid_run(daemon)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    exited = daemon.audit("run.exited", run_id=run_id)
    assert [e["reason"] for e in exited] == ["CANCELLED"]


def test_the_audit_is_written_when_the_log_level_is_error(tmp_path: Path) -> None:
    """logger.level silences the daemon's chatter, never its record of what ran."""
    d = start_daemon(tmp_path, TEST_POLICY.replace("level: info", "level: error"))
    try:
        with d.client() as c:
            run_id = c.run(["echo", "hi"], agent="dev").run_id
            with pytest.raises(PolicyDeniedError):
                c.run(["rm", "x"], agent="dev")
        assert d.audit("run.started", run_id=run_id)
        assert d.audit("run.exited", run_id=run_id)
        assert d.audit("call.denied", rule="tools.shell.denied_commands")
    finally:
        d.stop()
    assert not any('"level": "info"' in line and '"audit"' not in line
                   for line in d.stderr_lines)
