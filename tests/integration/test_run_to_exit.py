"""ExecService.RunToExit against a real daemon: a short call answered in one response; a
run that goes on (past a second, or past 1 MiB of output) handed over to its caller, who
reads the rest with AttachRun and loses nothing; a handed-over run nobody reads on is
stopped; the client's run() takes it, and stopping run() early stops the run."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator

import grpc
import pytest

from execgate.client import AsyncClient, Client
from execgate.v1 import exec_pb2, exec_pb2_grpc
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon
from tests.integration.test_exec import _running, _sleeper, _survivors, _when_sleeping

METADATA = (("authorization", f"Bearer {API_KEY}"),)
# A replay buffer smaller than the output: what a handed-over run writes before its caller
# attaches must wait for it, not be dropped. A short grace, to see a run nobody claims end.
POLICY = TEST_POLICY.replace("max_output_bytes: 1MiB", "max_output_bytes: 64MiB") + """\
runs:
  replay_bytes: 256KiB
  handover_grace: 2s
"""
BIG = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("daemon"), POLICY)
    data = bytes(range(256)) * (BIG // 256)
    (d.workspace / "big.bin").write_bytes(data)
    yield d
    d.stop()


@pytest.fixture
def stub(daemon: Daemon) -> Iterator[exec_pb2_grpc.ExecServiceStub]:
    with grpc.insecure_channel(daemon.target) as channel:
        yield exec_pb2_grpc.ExecServiceStub(channel)


def _call(stub: exec_pb2_grpc.ExecServiceStub, *argv: str,
          stdin: bytes = b"") -> exec_pb2.RunToExitResponse:
    return stub.RunToExit(exec_pb2.RunRequest(
        start=exec_pb2.StartCall(agent="dev", argv=list(argv)), stdin=stdin),
        metadata=METADATA, timeout=30)


def _output(events: Iterator[exec_pb2.ExecuteResponse] | list[exec_pb2.ExecuteResponse],
            ) -> bytes:
    return b"".join(e.output.data for e in events if e.HasField("output"))


def _until_running(marker: str) -> None:
    while not _running(marker):
        time.sleep(0.05)


def test_a_short_call_is_answered_whole_in_one_response(
        stub: exec_pb2_grpc.ExecServiceStub) -> None:
    response = _call(stub, "cat", stdin=b"one\0two\n")
    kinds = [e.WhichOneof("response") for e in response.events]
    assert (kinds[0], kinds[-1], response.continued) == ("accepted", "exit", False)
    assert _output(response.events) == b"one\0two\n"
    assert response.events[-1].exit.reason == exec_pb2.EXIT_REASON_EXITED


def test_a_refused_call_names_the_rule(stub: exec_pb2_grpc.ExecServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(stub, "rm", "-rf", "x")
    trailing = dict(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert trailing["execgate-error"] == "policy_denied"
    assert trailing["execgate-rule"].startswith("tools.")


def test_a_run_past_a_second_is_handed_over_and_read_on_with_attach(
        stub: exec_pb2_grpc.ExecServiceStub) -> None:
    response = _call(stub, "sh", "-c", "echo before; sleep 2; echo after")
    assert response.continued
    assert [e for e in response.events if e.HasField("exit")] == []
    assert _output(response.events) == b"before\n"
    rest = list(stub.AttachRun(exec_pb2.AttachRunRequest(
        run_id=response.events[0].accepted.run_id, stdout_offset=len(b"before\n")),
        metadata=METADATA, timeout=30))
    assert _output(r for r in rest if r.HasField("output")) == b"after\n"  # type: ignore[misc]
    assert rest[-1].exit.exit_code == 0


def test_a_handed_over_runs_output_waits_for_its_caller(
        stub: exec_pb2_grpc.ExecServiceStub, daemon: Daemon) -> None:
    """8 MiB through a 256 KiB replay buffer, the caller attaching only after a pause:
    every byte arrives, none dropped."""
    response = _call(stub, "cat", "big.bin")
    assert response.continued
    head = _output(response.events)
    time.sleep(1.0)  # the command would have written everything by now if nothing held it
    rest = list(stub.AttachRun(exec_pb2.AttachRunRequest(
        run_id=response.events[0].accepted.run_id, stdout_offset=len(head)),
        metadata=METADATA, timeout=60))
    data = head + b"".join(r.output.data for r in rest if r.HasField("output"))
    assert hashlib.sha256(data).digest() == hashlib.sha256(
        (daemon.workspace / "big.bin").read_bytes()).digest()
    assert (rest[-1].exit.exit_code, rest[-1].exit.dropped_bytes) == (0, 0)


def test_a_slow_run_reader_loses_nothing_through_a_small_replay_buffer(
        stub: exec_pb2_grpc.ExecServiceStub, daemon: Daemon) -> None:
    call = stub.Run(exec_pb2.RunRequest(start=exec_pb2.StartCall(
        agent="dev", argv=["cat", "big.bin"])), metadata=METADATA, timeout=60)
    time.sleep(1.0)  # the caller reads nothing yet: the command must wait for it
    data = b"".join(e.output.data for batch in call for e in batch.events
                    if e.HasField("output"))
    assert data == (daemon.workspace / "big.bin").read_bytes()


def test_a_handed_over_run_nobody_reads_on_is_stopped(
        stub: exec_pb2_grpc.ExecServiceStub, daemon: Daemon) -> None:
    marker = _sleeper()
    response = _call(stub, "sh", "-c", f"sleep {marker} & {_when_sleeping(1)}; wait")
    assert response.continued and _running(marker)
    run_id = response.events[0].accepted.run_id
    [exited] = daemon.audit("run.exited", run_id=run_id)  # after runs.handover_grace
    assert exited["reason"] == "TIMEOUT" and "runs.handover_grace" in exited["message"]
    assert _survivors(marker) == []


def test_client_run_reads_a_long_run_to_its_end(client: Client) -> None:
    result = client.run(["sh", "-c", "printf a; sleep 1.5; printf b >&2; printf c"],
                        agent="dev")
    assert (result.stdout, result.stderr, result.exit_code) == (b"ac", b"b", 0)


def test_client_run_gets_every_byte_of_a_big_output(client: Client, daemon: Daemon) -> None:
    result = client.run(["cat", "big.bin"], agent="dev")
    assert result.stdout == (daemon.workspace / "big.bin").read_bytes()
    assert result.exit.dropped_bytes == 0


def test_client_run_takes_run_to_exit(client: Client, daemon: Daemon) -> None:
    run_id = client.run(["echo", "a"], agent="dev").run_id
    [record] = daemon.audit("run.started", run_id=run_id)
    assert record["rpc"] == "/execgate.v1.ExecService/RunToExit"


def test_cancelling_an_async_run_while_it_reads_on_stops_the_run(daemon: Daemon) -> None:
    marker = _sleeper()

    async def cancelled() -> None:
        async with AsyncClient(daemon.target, token=API_KEY) as client:
            task = asyncio.create_task(client.run(["sh", "-c", f"sleep {marker}"],
                                                  agent="dev"))
            await asyncio.to_thread(_until_running, marker)
            await asyncio.sleep(1.5)  # past the answer: the client reads on with AttachRun
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancelled())
    with daemon.client() as client:
        [run] = [r for r in client.runs() if r.argv == ("sh", "-c", f"sleep {marker}")]
    assert daemon.audit("run.cancelled", run_id=run.run_id)  # not runs.handover_grace
    assert _survivors(marker) == []
