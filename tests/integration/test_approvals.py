"""Human approval through a real daemon: nothing runs unless a person entitled to decide
approves exactly the plan they were shown."""

from __future__ import annotations

import os
import queue
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from execgate.client import (
    ApprovalDecision,
    ApprovalDeniedError,
    ApprovalRequested,
    Client,
    NotFoundError,
)
from execgate.v1 import exec_pb2, exec_pb2_grpc
from tests.conftest import API_KEY, Daemon, start_daemon

APPROVER_KEY = "approver-key-0123456789"
OTHER_KEY = "other-caller-key-0123456789"

POLICY = """\
version: "2"
approvals:
  timeout: ${APPROVAL_TIMEOUT:-60s}
  allow_self_approval: ${SELF:-true}
  approvers: [{subject: approver}]
tools:
  shell:
    type: command
    allowed_commands: [echo, touch]
    require_approval_for: [touch]
    approval_prompt: "Run {command}?"
  writer:
    type: function
    handler: write_file
    require_approval: true
    approval_prompt: "Allow writing to {file}?"
agents:
  dev: {tools: [shell, writer]}
server:
  auth:
    enabled: true
    api_keys:
      - {name: caller, key: "${TEST_API_KEY}"}
      - {name: approver, key: "APPROVER_KEY"}
      - {name: other, key: "OTHER_KEY"}
sandbox: {cgroup: optional}
logger: {level: info, format: json}
""".replace("APPROVER_KEY", APPROVER_KEY).replace("OTHER_KEY", OTHER_KEY)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("approvals"), POLICY)
    yield d
    d.stop()


def wait_for_pending(daemon: Daemon, argv_tail: str) -> ApprovalRequested:
    """The approver's view of the request whose plan ends with ``argv_tail``."""
    with Client(daemon.target, token=APPROVER_KEY) as approver:
        for event in approver.watch_approvals():
            if isinstance(event, ApprovalRequested) and event.plan.argv[-1] == argv_tail:
                return event
    raise AssertionError("no such pending approval")


def in_background(fn: object) -> tuple[threading.Thread, queue.Queue[object]]:
    out: queue.Queue[object] = queue.Queue()

    def run() -> None:
        try:
            out.put(fn())  # type: ignore[operator]
        except Exception as exc:
            out.put(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_approve_runs_the_plan_shown(daemon: Daemon) -> None:
    seen: list[ApprovalRequested] = []

    def approve(request: ApprovalRequested) -> bool:
        seen.append(request)
        return True

    with daemon.client() as c:
        result = c.run(["touch", "approved.txt"], agent="dev", on_approval=approve)
    assert result.exit_code == 0
    assert (daemon.workspace / "approved.txt").exists()
    assert seen[0].prompt == "Run touch approved.txt?"
    assert seen[0].plan.executable.endswith("/touch")
    assert seen[0].requester == "caller"


def test_a_command_outside_require_approval_for_runs_without_asking(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.run(["echo", "free"], agent="dev").stdout == b"free\n"


def test_deny_runs_nothing_and_gives_the_reason(daemon: Daemon) -> None:
    with daemon.client() as c, pytest.raises(ApprovalDeniedError, match="not today"):
        c.run(["touch", "denied.txt"], agent="dev",
              on_approval=lambda r: ApprovalDecision(False, "not today"))
    assert not (daemon.workspace / "denied.txt").exists()
    assert daemon.audit("approval.denied", reason="not today")


def test_no_callback_means_deny(daemon: Daemon) -> None:
    with daemon.client() as c, pytest.raises(ApprovalDeniedError):
        c.call("writer", agent="dev", path="nope.txt", content="x")
    assert not (daemon.workspace / "nope.txt").exists()


def test_a_function_tools_prompt_names_the_file(daemon: Daemon) -> None:
    prompts: list[str] = []
    with daemon.client() as c:
        c.call("writer", agent="dev", path="notes.txt", content="hi",
               on_approval=lambda r: prompts.append(r.prompt) or True)
    assert prompts == ["Allow writing to notes.txt?"]
    assert (daemon.workspace / "notes.txt").read_text() == "hi"


def test_expiry_denies_at_the_timeout(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, POLICY, env={"APPROVAL_TIMEOUT": "1s"})
    try:
        with d.client() as c, pytest.raises(ApprovalDeniedError, match="no decision within 1s"):
            c.run(["touch", "late.txt"], agent="dev", on_approval=lambda r: None)
        assert not (d.workspace / "late.txt").exists()
        assert d.audit("approval.expired")
    finally:
        d.stop()


def test_the_caller_going_away_withdraws_the_request(daemon: Daemon) -> None:
    with daemon.client() as c:
        events = c.stream(["touch", "gone.txt"], agent="dev", on_approval=lambda r: None)
        request = next(e for e in events if isinstance(e, ApprovalRequested))
        events.close()
    assert daemon.audit("approval.cancelled", approval_id=request.approval_id)
    with Client(daemon.target, token=APPROVER_KEY) as approver, pytest.raises(NotFoundError):
        approver.decide_approval(request, True)
    assert not (daemon.workspace / "gone.txt").exists()


def test_an_approver_decides_a_callers_request_and_a_second_decision_is_refused(
        daemon: Daemon) -> None:
    with daemon.client() as c:
        thread, out = in_background(lambda: c.run(["touch", "by-approver.txt"], agent="dev",
                                                   on_approval=lambda r: None))
        request = wait_for_pending(daemon, "by-approver.txt")
        with Client(daemon.target, token=APPROVER_KEY) as approver:
            approver.decide_approval(request, True)
            thread.join()
            assert out.get().exit_code == 0  # type: ignore[attr-defined]
            with pytest.raises(NotFoundError):
                approver.decide_approval(request, False)
    assert (daemon.workspace / "by-approver.txt").exists()


def test_a_non_approver_cannot_decide_anothers_request(daemon: Daemon) -> None:
    with daemon.client() as c:
        thread, out = in_background(lambda: c.run(["touch", "not-yours.txt"], agent="dev",
                                                   on_approval=lambda r: None))
        request = wait_for_pending(daemon, "not-yours.txt")
        with Client(daemon.target, token=OTHER_KEY) as other:
            with pytest.raises(Exception, match="may not decide"):
                other.decide_approval(request, True)
            assert list(_first_pending(other)) == []  # not offered to them either
        with Client(daemon.target, token=APPROVER_KEY) as approver:
            approver.decide_approval(request, False, "cleanup")
        thread.join()
        assert isinstance(out.get(), ApprovalDeniedError)


def _first_pending(client: Client) -> Iterator[ApprovalRequested]:
    """What a watcher is shown at once (the stream is cut after a short while)."""
    call_done = threading.Timer(1.0, lambda: client.close())
    call_done.start()
    try:
        for event in client.watch_approvals():
            if isinstance(event, ApprovalRequested):
                yield event
    except Exception:
        pass
    finally:
        call_done.cancel()


def test_a_decision_with_a_different_plan_digest_is_refused(daemon: Daemon) -> None:
    with daemon.client() as c:
        thread, _ = in_background(lambda: c.run(["touch", "digest.txt"], agent="dev",
                                                   on_approval=lambda r: None))
        request = wait_for_pending(daemon, "digest.txt")
        forged = ApprovalRequested(request.approval_id, request.prompt, request.plan,
                                   "0" * 64, request.requester, request.expires_at)
        with Client(daemon.target, token=APPROVER_KEY) as approver:
            with pytest.raises(Exception, match="plan_digest does not match"):
                approver.decide_approval(forged, True)
            approver.decide_approval(request, False)
        thread.join()
    assert not (daemon.workspace / "digest.txt").exists()


def test_a_decision_for_another_streams_request_is_refused(daemon: Daemon) -> None:
    with daemon.client() as c:
        thread, _ = in_background(lambda: c.run(["touch", "victim.txt"], agent="dev",
                                                   on_approval=lambda r: None))
        victim = wait_for_pending(daemon, "victim.txt")
        with grpc.insecure_channel(daemon.target) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            outbox: queue.Queue[exec_pb2.ExecuteRequest | None] = queue.Queue()
            outbox.put(exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
                agent="dev", argv=["touch", "attacker.txt"])))
            call = stub.Execute(iter(outbox.get, None),
                                metadata=(("authorization", f"Bearer {API_KEY}"),))
            first = next(call)
            assert first.WhichOneof("response") == "approval_request"
            outbox.put(exec_pb2.ExecuteRequest(approval=exec_pb2.ApprovalDecision(
                approval_id=victim.approval_id, approve=True, plan_digest=victim.plan_digest)))
            assert daemon.audit("approval.refused", approval_id=victim.approval_id)
            outbox.put(None)
            call.cancel()
        with Client(daemon.target, token=APPROVER_KEY) as approver:
            approver.decide_approval(victim, False)  # still pending: the forgery did not count
        thread.join()
    assert not (daemon.workspace / "victim.txt").exists()


def test_four_eyes_refuses_self_approval_and_runs_on_an_approvers(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, POLICY, env={"SELF": "false"})
    try:
        with d.client() as c:
            thread, out = in_background(lambda: c.run(["touch", "four-eyes.txt"], agent="dev",
                                                       on_approval=lambda r: True))
            request = wait_for_pending(d, "four-eyes.txt")
            assert d.audit("approval.refused", rule="approvals.allow_self_approval")
            assert not (d.workspace / "four-eyes.txt").exists()
            with Client(d.target, token=APPROVER_KEY) as approver:
                approver.decide_approval(request, True)
            thread.join()
            assert out.get().exit_code == 0  # type: ignore[attr-defined]
        assert (d.workspace / "four-eyes.txt").exists()
    finally:
        d.stop()


@pytest.mark.parametrize(("argument", "shown"), [("a\x1b[2Kb", "a\\x1b[2Kb"),
                                                  ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
                                                  ("zero\u200bwidth", "zero\\u200bwidth")])
def test_a_prompt_shows_control_bidi_and_zero_width_characters_escaped(
        daemon: Daemon, argument: str, shown: str) -> None:
    prompts: list[str] = []
    with daemon.client() as c, pytest.raises(ApprovalDeniedError):
        c.run(["touch", argument], agent="dev",
              on_approval=lambda r: prompts.append(r.prompt) or False)
    assert shown in prompts[0]
    assert argument not in prompts[0]


def test_50_concurrent_approvals_are_decided_independently(daemon: Daemon) -> None:
    keys = [API_KEY, OTHER_KEY]
    results: dict[int, object] = {}

    def call(i: int) -> None:
        with Client(daemon.target, token=keys[i % 2]) as c:
            try:
                results[i] = c.run(["touch", f"many-{i}"], agent="dev",
                                   on_approval=lambda r: None).exit_code
            except ApprovalDeniedError:
                results[i] = "denied"

    threads = [threading.Thread(target=call, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    decided = 0
    with Client(daemon.target, token=APPROVER_KEY) as approver:
        for event in approver.watch_approvals():
            if isinstance(event, ApprovalRequested) and event.plan.argv[-1].startswith("many-"):
                i = int(event.plan.argv[-1].removeprefix("many-"))
                approver.decide_approval(event, approve=i % 2 == 0)
                decided += 1
                if decided == 50:
                    break
    for t in threads:
        t.join()
    assert results == {i: 0 if i % 2 == 0 else "denied" for i in range(50)}
    assert {p.name for p in daemon.workspace.glob("many-*")} == {
        f"many-{i}" for i in range(0, 50, 2)}


def test_a_restarted_daemon_has_no_approval_that_can_be_used(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, POLICY)
    with d.client() as c:
        thread, out = in_background(lambda: c.run(["touch", "restart.txt"], agent="dev",
                                                   on_approval=lambda r: None))
        request = wait_for_pending(d, "restart.txt")
        d.stop()
        thread.join()
    assert isinstance(out.get(), Exception)
    d2 = start_daemon(tmp_path, POLICY)
    try:
        with Client(d2.target, token=APPROVER_KEY) as approver, pytest.raises(NotFoundError):
            approver.decide_approval(request, True)
        assert not (tmp_path / "workspace" / "restart.txt").exists()
    finally:
        d2.stop()


def _execgate(daemon: Daemon, *args: str, token: str = API_KEY) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")}
    env.update(EXECGATE_TARGET=daemon.target, EXECGATE_TOKEN=token)
    return [sys.executable, "-m", "execgate.client._cli", *args], env  # type: ignore[return-value]


def test_execgate_run_asks_on_a_real_terminal(daemon: Daemon) -> None:
    argv, env = _execgate(daemon, "run", "--agent", "dev", "--", "touch", "from-tty.txt")
    # script(1) gives the command a pseudo-terminal as its controlling terminal.
    proc = subprocess.Popen(["script", "-qfec", subprocess.list2cmdline(argv), "/dev/null"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    while b"[y/N]" not in seen:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, f"no prompt; saw {seen!r}"
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"no prompt; saw {seen!r}"
        seen += chunk
    assert b"Run touch from-tty.txt? [y/N]" in seen
    proc.stdin.write(b"y\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
    proc.stdin.close()
    proc.stdout.close()
    assert (daemon.workspace / "from-tty.txt").exists()


def test_execgate_run_without_a_terminal_denies_with_status_126(daemon: Daemon) -> None:
    argv, env = _execgate(daemon, "run", "--agent", "dev", "--", "touch", "no-tty.txt")
    result = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL,
                            timeout=60)
    assert result.returncode == 126
    assert b"approval denied" in result.stderr
    assert not (daemon.workspace / "no-tty.txt").exists()


def test_the_approvals_cli_approves_a_waiting_call(daemon: Daemon) -> None:
    argv, env = _execgate(daemon, "run", "--agent", "dev", "--wait-for-approver", "--",
                          "touch", "via-cli.txt")
    caller = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    request = wait_for_pending(daemon, "via-cli.txt")
    argv, env = _execgate(daemon, "approvals", "approve", request.approval_id,
                          token=APPROVER_KEY)
    decided = subprocess.run(argv, env=env, capture_output=True, timeout=60)
    assert decided.returncode == 0, decided.stderr
    assert caller.wait(timeout=60) == 0
    caller.stdout.close()  # type: ignore[union-attr]
    caller.stderr.close()  # type: ignore[union-attr]
    assert (daemon.workspace / "via-cli.txt").exists()


def test_a_second_start_while_pending_ends_the_call_and_withdraws_it(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.target) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        start = exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
            agent="dev", argv=["touch", "second-start.txt"]))
        outbox: queue.Queue[exec_pb2.ExecuteRequest | None] = queue.Queue()
        outbox.put(start)
        call = stub.Execute(iter(outbox.get, None),
                            metadata=(("authorization", f"Bearer {API_KEY}"),))
        request = next(call).approval_request
        outbox.put(start)
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        outbox.put(None)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert daemon.audit("approval.cancelled", approval_id=request.approval_id)
    assert not (daemon.workspace / "second-start.txt").exists()


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_the_approvals_cli_answers_an_unknown_id_at_once_with_status_1(
        daemon: Daemon, action: str) -> None:
    argv, env = _execgate(daemon, "approvals", action, "0" * 32, token=APPROVER_KEY)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "no pending approval" in result.stderr


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_the_approvals_cli_refuses_a_caller_not_entitled_with_status_126(
        daemon: Daemon, action: str) -> None:
    with daemon.client() as c:
        thread, out = in_background(lambda: c.run(["touch", f"cli-{action}-other.txt"],
                                                   agent="dev", on_approval=lambda r: None))
        request = wait_for_pending(daemon, f"cli-{action}-other.txt")
        argv, env = _execgate(daemon, "approvals", action, request.approval_id,
                              token=OTHER_KEY)
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
        with Client(daemon.target, token=APPROVER_KEY) as approver:
            approver.decide_approval(request, False, "cleanup")
        thread.join()
    assert isinstance(out.get(), ApprovalDeniedError)  # by the approver's cleanup
    assert result.returncode == 126
    assert "may not decide" in result.stderr
    assert "approvals.approvers" in result.stderr
    assert not (daemon.workspace / f"cli-{action}-other.txt").exists()


def test_the_approvals_cli_denies_a_waiting_call_with_its_reason(daemon: Daemon) -> None:
    with daemon.client() as c:
        thread, out = in_background(lambda: c.run(["touch", "cli-denied.txt"], agent="dev",
                                                   on_approval=lambda r: None))
        request = wait_for_pending(daemon, "cli-denied.txt")
        argv, env = _execgate(daemon, "approvals", "deny", request.approval_id,
                              "--reason", "not now", token=APPROVER_KEY)
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
        thread.join()
    assert result.returncode == 0, result.stderr
    denied = out.get()
    assert isinstance(denied, ApprovalDeniedError)
    assert "not now" in str(denied)
