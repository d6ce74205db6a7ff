"""ExecService.Run against a real daemon: a call given whole in one request, its events
streamed back as Execute's; a call that needs a person's approval is refused, since nobody
can be asked; leaving the stream stops the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from execgate.client import ApprovalDeniedError, Client, RunResult, Started
from execgate.v1 import exec_pb2, exec_pb2_grpc
from tests.conftest import API_KEY, Daemon, start_daemon
from tests.integration.test_approvals import APPROVER_KEY, in_background, wait_for_pending
from tests.integration.test_approvals import POLICY as APPROVAL_POLICY
from tests.integration.test_exec import _running, _sleeper, _survivors, _when_sleeping

METADATA = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture
def stub(daemon: Daemon) -> Iterator[exec_pb2_grpc.ExecServiceStub]:
    with grpc.insecure_channel(daemon.target) as channel:
        yield exec_pb2_grpc.ExecServiceStub(channel)


@pytest.fixture
def asking(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose shell tool asks a person before `touch`."""
    daemon = start_daemon(tmp_path, APPROVAL_POLICY)
    yield daemon
    daemon.stop()


def _start(*argv: str) -> exec_pb2.StartCall:
    return exec_pb2.StartCall(agent="dev", argv=list(argv))


def _events(call: Iterator[exec_pb2.RunResponse]) -> list[exec_pb2.ExecuteResponse]:
    return [event for batch in call for event in batch.events]


def test_a_run_takes_its_stdin_whole_and_streams_accepted_output_and_exit(
        stub: exec_pb2_grpc.ExecServiceStub) -> None:
    responses = _events(stub.Run(exec_pb2.RunRequest(start=_start("cat"), stdin=b"one\0two\n"),
                                 metadata=METADATA, timeout=30))
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds[0] == "accepted" and kinds[-1] == "exit"
    assert b"".join(r.output.data for r in responses if r.HasField("output")) == b"one\0two\n"
    assert (responses[-1].exit.reason, responses[-1].exit.exit_code) == (
        exec_pb2.EXIT_REASON_EXITED, 0)


def test_a_run_without_stdin_reads_end_of_file(stub: exec_pb2_grpc.ExecServiceStub) -> None:
    responses = _events(stub.Run(exec_pb2.RunRequest(start=_start("cat")), metadata=METADATA,
                                 timeout=30))
    assert not [r for r in responses if r.HasField("output")]
    assert responses[-1].exit.exit_code == 0


def test_a_run_refused_by_policy_names_the_rule(stub: exec_pb2_grpc.ExecServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Run(exec_pb2.RunRequest(start=_start("rm", "-rf", "x")), metadata=METADATA,
                      timeout=30))
    trailing = dict(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert trailing["execgate-error"] == "policy_denied"
    assert trailing["execgate-rule"].startswith("tools.")


def test_a_run_that_needs_approval_is_refused_and_asks_nobody(asking: Daemon) -> None:
    with grpc.insecure_channel(asking.target) as channel, pytest.raises(grpc.RpcError) as info:
        list(exec_pb2_grpc.ExecServiceStub(channel).Run(
            exec_pb2.RunRequest(start=_start("touch", "asked.txt")), metadata=METADATA,
            timeout=30))
    trailing = dict(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert (trailing["execgate-error"], trailing["execgate-rule"]) == (
        "approval_denied", "tools.shell.require_approval_for")
    assert not (asking.workspace / "asked.txt").exists()
    assert asking.audit("call.denied", rule="tools.shell.require_approval_for")
    assert not [line for line in asking.stderr_lines if "approval.requested" in line]


def test_run_without_a_callback_under_four_eyes_waits_for_an_approver(tmp_path: Path) -> None:
    """run() without on_approval takes an Execute stream for a call the policy asks about:
    its own refusal does not count under four eyes, and an approver's approval does."""
    daemon = start_daemon(tmp_path, APPROVAL_POLICY, env={"SELF": "false"})
    try:
        with daemon.client() as client:
            thread, out = in_background(lambda: client.run(["touch", "four.txt"], agent="dev"))
            request = wait_for_pending(daemon, "four.txt")
            with Client(daemon.target, token=APPROVER_KEY) as approver:
                approver.decide_approval(request, True)
            thread.join()
        result = out.get()
        assert isinstance(result, RunResult) and result.exit_code == 0
        assert (daemon.workspace / "four.txt").exists()
    finally:
        daemon.stop()


def test_run_without_a_callback_is_denied_where_the_caller_may_decide(asking: Daemon) -> None:
    with asking.client() as client, pytest.raises(ApprovalDeniedError, match="no on_approval"):
        client.run(["touch", "asked.txt"], agent="dev")
    assert not (asking.workspace / "asked.txt").exists()


def test_a_run_cannot_detach(stub: exec_pb2_grpc.ExecServiceStub) -> None:
    start = _start("true")
    start.detach = True
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Run(exec_pb2.RunRequest(start=start), metadata=METADATA, timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_with_an_approval_callback_run_still_asks(asking: Daemon) -> None:
    with asking.client() as client:
        result = client.run(["touch", "asked.txt"], agent="dev", on_approval=lambda r: True)
    assert result.exit_code == 0 and (asking.workspace / "asked.txt").exists()


def test_accepted_comes_with_the_runs_first_event(
        stub: exec_pb2_grpc.ExecServiceStub) -> None:
    """A run without output is one message (accepted waits 50 ms for the exit: of five
    `true`, one at least ends within it, however busy the machine)."""
    batches = [[e.WhichOneof("response") for e in batch.events]
               for _ in range(5)
               for batch in stub.Run(exec_pb2.RunRequest(start=_start("true")),
                                     metadata=METADATA, timeout=30)]
    assert ["accepted", "exit"] in batches


def test_a_quiet_runs_id_is_sent_before_it_ends(stub: exec_pb2_grpc.ExecServiceStub) -> None:
    """accepted waits for the next event only a moment: a quiet run's caller learns its id
    (and could cancel it elsewhere) while it runs."""
    call = stub.Run(exec_pb2.RunRequest(start=_start("sleep", "30")), metadata=METADATA,
                    timeout=60)
    first = next(call)
    assert first.events[0].HasField("accepted") and not [
        e for e in first.events if e.HasField("exit")]
    call.cancel()


def test_leaving_a_run_stream_kills_the_whole_job(stub: exec_pb2_grpc.ExecServiceStub) -> None:
    marker = _sleeper()
    script = f"setsid sleep {marker} & {_when_sleeping(1)}; echo go; wait"
    call = stub.Run(exec_pb2.RunRequest(start=_start("sh", "-c", script)), metadata=METADATA,
                    timeout=60)
    for batch in call:
        if any(event.HasField("output") for event in batch.events):
            break
    assert _running(marker)
    call.cancel()
    assert _survivors(marker) == []


def test_client_stream_takes_run_and_a_callback_takes_execute(
        client: Client, daemon: Daemon) -> None:
    streamed = next(iter(client.stream(["echo", "b"], agent="dev")))
    asked = next(iter(client.stream(["echo", "c"], agent="dev", on_approval=lambda r: True)))
    assert isinstance(streamed, Started) and isinstance(asked, Started)
    for run_id, rpc in ((streamed.run_id, "Run"), (asked.run_id, "Execute")):
        [record] = daemon.audit("run.started", run_id=run_id)
        assert record["rpc"] == f"/execgate.v1.ExecService/{rpc}"
