"""Malformed calls to every service, from a fixed seed: every one ends in a status that names
the caller's mistake (or a refusal) within its deadline, never UNKNOWN or INTERNAL; the daemon
logs no error, never dies, and a valid call succeeds afterwards.

CI runs a fixed seed; ``EXECGATE_FUZZ_CASES=N`` runs N Execute streams and 3N calls to the
other services instead (``EXECGATE_FUZZ_SEED`` draws other cases), for long runs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from execgate.daemon.audit import Audit
from execgate.daemon.services import ExecService
from execgate.daemon.snapshot import Current
from execgate.v1 import agents_pb2, approvals_pb2, exec_pb2, exec_pb2_grpc
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

SEED = int(os.environ.get("EXECGATE_FUZZ_SEED", "20260830"))
CASES = int(os.environ.get("EXECGATE_FUZZ_CASES", "800"))
WORKERS = 4
DEADLINE = 5.0
"""Seconds per case: a mutated call that runs may wait for stdin the fuzzer never sends."""
METHOD = "/execgate.v1.ExecService/Execute"
CRASHES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
FUNCTIONS = ("read_file", "list_directory", "grep_search", "write_file")
AUTH = (("authorization", f"Bearer {API_KEY}"),)
FUZZ_POLICY = TEST_POLICY.replace(
    "tools:\n", "approvals:\n  timeout: 1s\n  approvers: [{subject: tester}]\ntools:\n"
    "  gated:\n    type: command\n    allowed_commands: [echo]\n    require_approval: true\n", 1,
).replace("agents:\n", "agents:\n  gate:\n    tools: [gated]\n", 1).replace(
    "  auth:\n    enabled: true\n",
    "  auth:\n    enabled: true\n    max_failed_attempts: 1000000\n", 1)
"""The test policy with an agent whose every call waits for approval, and the caller as its
approver: approval messages and RPCs then meet real pending approvals. The fuzzer's bad
credentials must not lock its own address out (test_auth_flood.py tests that limit)."""

Messages = list[bytes]


def _text(rng: random.Random) -> str:
    """A short string from the corners: empty, unicode, separators, NUL, path tricks, long."""
    return rng.choice([
        "", "dev", "shell", "read_file", "grep_search", "..", "/", "a/../..", "ｄｅｖ",
        "\u202e", "x" * rng.choice([255, 256, 4096, 70_000]), "\0", "a=b", "-", "*",
        "loop/" * 50, "%s%n", "\ud7ff", "echo", "true", "sleep", "cat", "yes"])


def _start(rng: random.Random) -> exec_pb2.StartCall:
    """A StartCall with every field drawn from plausible and implausible values."""
    # Mostly the agent that exists: a call refused at the first step tests little.
    start = exec_pb2.StartCall(agent="dev" if rng.random() < 0.8 else rng.choice(
                                   ["ops", "helper", "gate", _text(rng)]),
                               tool=rng.choice(["", "shell", "gated", *FUNCTIONS,
                                                _text(rng)]))
    start.argv.extend(rng.choice([["true"], ["echo", _text(rng)], ["sleep", "0"], ["cat"],
                                  [_text(rng)], [], [_text(rng), _text(rng)]]))
    if start.tool in FUNCTIONS or rng.random() < 0.2:
        start.arguments["path"] = rng.choice(["small.txt", ".", _text(rng)])
    for _ in range(rng.randrange(3)):
        start.arguments[rng.choice(["offset", "limit", "pattern", "content", "max_results",
                                    _text(rng)])] = rng.choice([
            str(2**63), "9" * 5000, str(-1), "NaN", "1e400", "0x10", "1", _text(rng)])
    if rng.random() < 0.5:
        start.cwd = _text(rng)
    for _ in range(rng.randrange(3)):
        start.env[_text(rng) or "K"] = _text(rng)
    if rng.random() < 0.4:
        start.timeout.seconds = rng.choice([0, -1, 1, 2**62, -(2**62), 315_576_000_001])
        start.timeout.nanos = rng.choice([0, -1, 999_999_999, 1_000_000_000, -(2**31)])
    start.stdin = rng.random() < 0.3
    return start


def _control(rng: random.Random) -> exec_pb2.ExecuteRequest:
    """A message that may follow start, sometimes one that may not."""
    kind = rng.choice(["stdin", "close", "signal", "approval", "start", "empty"])
    if kind == "stdin":
        return exec_pb2.ExecuteRequest(stdin=rng.randbytes(rng.choice([0, 1, 100, 70_000])))
    if kind == "close":
        return exec_pb2.ExecuteRequest(close_stdin=exec_pb2.CloseStdin())
    if kind == "signal":
        return exec_pb2.ExecuteRequest(signal=exec_pb2.SendSignal(
            signal=rng.choice([0, 1, 9, 15, 64, 65, -1, 2**31 - 1, -(2**31)])))
    if kind == "approval":
        return exec_pb2.ExecuteRequest(approval=exec_pb2.ApprovalDecision(
            approval_id=_text(rng), approve=rng.random() < 0.5, reason=_text(rng),
            plan_digest=_text(rng)))
    if kind == "start":
        return exec_pb2.ExecuteRequest(start=_start(rng))
    return exec_pb2.ExecuteRequest()


def _mutated(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few bytes flipped, cut short, or spliced with noise."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        how = rng.choice(["flip", "cut", "insert"])
        if how == "flip" and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif how == "cut" and out:
            del out[rng.randrange(len(out)):]
        else:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
    return bytes(out)


def _case(rng: random.Random) -> Messages:
    """One stream's messages, in one of the shapes a broken or hostile client sends."""
    start = exec_pb2.ExecuteRequest(start=_start(rng)).SerializeToString()
    shape = rng.choice(["noise", "start", "start+control", "mutated", "wrong_order", "empty",
                        "huge", "many", "approval"])
    if shape == "many":  # many fields, or many messages, each within the size limit
        return _many(rng)
    if shape == "approval":  # a call that waits for approval, answered with what comes to hand
        gated = exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
            agent="gate", tool="gated", argv=["echo", _text(rng)]))
        return [gated.SerializeToString(),
                *(_control(rng).SerializeToString() for _ in range(rng.randrange(0, 3)))]
    if shape == "huge":  # past the daemon's message size limit, or just under it
        huge = exec_pb2.StartCall(agent="dev", argv=["echo", "x" * rng.choice(
            [4 * 1024 * 1024 - 64, 5 * 1024 * 1024])])
        return [exec_pb2.ExecuteRequest(start=huge).SerializeToString()]
    if shape == "noise":
        return [rng.randbytes(rng.randrange(0, 200))]
    if shape == "start":
        return [start]
    if shape == "start+control":
        return [start, *(_control(rng).SerializeToString() for _ in range(rng.randrange(1, 5)))]
    if shape == "mutated":
        return [_mutated(start, rng), *([_mutated(_control(rng).SerializeToString(), rng)]
                                        if rng.random() < 0.5 else [])]
    if shape == "wrong_order":
        return [_control(rng).SerializeToString(), start]
    return []


def _many(rng: random.Random) -> Messages:
    """Thousands of argv entries, env variables or arguments, or thousands of messages."""
    start = exec_pb2.StartCall(agent="dev", tool=rng.choice(["shell", "read_file"]))
    which = rng.choice(["argv", "env", "arguments", "stdin", "signals"])
    count = rng.choice([1000, 5000, 20_000])
    if which == "argv":
        start.argv.extend(["echo", *("a" * rng.randrange(1, 8) for _ in range(count))])
    elif which == "env":
        start.argv.append("true")
        for i in range(count):
            start.env[f"V{i}"] = "x"
    elif which == "arguments":
        for i in range(count):
            start.arguments[f"a{i}"] = "x"
    else:
        start.argv.extend(["cat"])
        start.stdin = True
    first = exec_pb2.ExecuteRequest(start=start).SerializeToString()
    if which == "stdin":
        chunk = exec_pb2.ExecuteRequest(stdin=b"y" * 100).SerializeToString()
        return [first, *([chunk] * 2000)]
    if which == "signals":
        sig = exec_pb2.ExecuteRequest(signal=exec_pb2.SendSignal(signal=0)).SerializeToString()
        return [first, *([sig] * 2000)]
    return [first]


def _cases() -> Iterator[Messages]:
    rng = random.Random(SEED)
    for _ in range(CASES):
        yield _case(rng)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("fuzz"), FUZZ_POLICY)
    (d.workspace / "small.txt").write_text("hello\n")
    yield d
    d.stop()


def _send(execute: Callable[..., object], messages: Messages) -> grpc.StatusCode:
    call = execute(iter(messages), timeout=DEADLINE, metadata=AUTH)
    try:
        for _ in call:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


def test_no_malformed_stream_ends_in_unknown_or_internal(fuzzed: Daemon) -> None:
    """A few streams at a time: cases that wait (for stdin, for an approval) overlap."""
    since = len(fuzzed.stderr_lines)
    with grpc.insecure_channel(fuzzed.target) as channel, ThreadPoolExecutor(WORKERS) as pool:
        execute = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        codes = pool.map(lambda messages: (_send(execute, messages), messages), _cases())
        crashed = [(code, messages) for code, messages in codes if code in CRASHES]
    assert crashed == []
    assert fuzzed.errors(since) == []
    _still_serving(fuzzed)


def test_cancelled_streams_leave_no_error_behind(fuzzed: Daemon) -> None:
    """A caller that cancels mid-call, at any point, is not the daemon's error."""
    rng = random.Random(SEED + 1)
    since = len(fuzzed.stderr_lines)
    with grpc.insecure_channel(fuzzed.target) as channel:
        execute = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        for _ in range(50):
            start = exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
                agent="dev", argv=["sh", "-c", "echo up; exec sleep 60"]))
            call = execute(iter([start.SerializeToString()]), timeout=DEADLINE, metadata=AUTH)
            for _ in range(rng.randrange(3)):  # cancel before, at or after the first reply
                next(call)
            call.cancel()
    assert fuzzed.errors(since) == []


@dataclass(frozen=True)
class _Live:
    """Ids that exist while the other services are fuzzed: a running call and a pending
    approval, so that mutated requests also name real things."""

    run_id: str
    approval_id: str
    plan_digest: str


def _unary_request(method: str, live: _Live, rng: random.Random) -> bytes:
    """A valid request for ``method``, its ids now real, now mangled."""
    def an_id(real: str) -> str:
        return rng.choice([real, real, real.upper(), real + "0", real[:-1], _text(rng), ""])
    if method.endswith("/GetApproval"):
        return approvals_pb2.GetApprovalRequest(
            approval_id=an_id(live.approval_id)).SerializeToString()
    if method.endswith("/DecideApproval"):
        return approvals_pb2.DecideApprovalRequest(decision=exec_pb2.ApprovalDecision(
            approval_id=an_id(live.approval_id), approve=False, reason=_text(rng),
            plan_digest=an_id(live.plan_digest))).SerializeToString()
    if method.endswith("/AttachRun"):
        return exec_pb2.AttachRunRequest(
            run_id=an_id(live.run_id), stdout_offset=rng.choice([0, 1, 2**63, 2**64 - 1]),
            stderr_offset=rng.choice([0, 2**64 - 1])).SerializeToString()
    if method.endswith("/CancelRun"):
        # Never the live run itself: the other cases need it running.
        return exec_pb2.CancelRunRequest(run_id=an_id(live.run_id) + "x").SerializeToString()
    if method.endswith("/SignalRun"):
        return exec_pb2.SignalRunRequest(run_id=an_id(live.run_id), signal=rng.choice(
            [0, 18, 19, 28, 65, -1, 2**31 - 1, -(2**31)])).SerializeToString()
    if method.endswith("/ListAgents"):
        return agents_pb2.ListAgentsRequest().SerializeToString()
    if method.endswith(("/Run", "/RunToExit")):
        return exec_pb2.RunRequest(start=exec_pb2.StartCall(
            agent="dev", tool="shell", argv=rng.choice([["true"], ["echo", _text(rng)],
                                                        ["rm", "x"], []]),
            detach=rng.random() < 0.1), stdin=rng.choice([b"", b"in"])).SerializeToString()
    return b""  # ListRuns, WatchApprovals


RUNS = hasattr(exec_pb2, "ListRunsRequest")
"""Whether this build has the runs RPCs (AttachRun, ListRuns, CancelRun, SignalRun)."""
UNARY = ("/execgate.v1.AgentService/ListAgents", "/execgate.v1.ApprovalService/GetApproval",
         "/execgate.v1.ApprovalService/DecideApproval", *(
             ("/execgate.v1.ExecService/ListRuns", "/execgate.v1.ExecService/CancelRun",
              "/execgate.v1.ExecService/SignalRun") if RUNS else ()),
         *(("/execgate.v1.ExecService/RunToExit",) if hasattr(exec_pb2, "RunToExitResponse")
           else ()))
STREAMING = ("/execgate.v1.ApprovalService/WatchApprovals",
             *(("/execgate.v1.ExecService/AttachRun",) if RUNS else ()),
             *(("/execgate.v1.ExecService/Run",) if hasattr(exec_pb2, "RunRequest") else ()))


def _payload(method: str, live: _Live, rng: random.Random) -> bytes:
    """Noise, a valid request, a mutated one, one with many unknown fields, or a huge one."""
    shape = rng.choice(["noise", "valid", "mutated", "mutated", "unknown_fields"] * 4 + ["huge"])
    valid = _unary_request(method, live, rng)
    if shape == "noise":
        return rng.randbytes(rng.randrange(0, 300))
    if shape == "valid":
        return valid
    if shape == "mutated":
        return _mutated(valid, rng)
    if shape == "unknown_fields":  # field 99, varint, repeated: parsers must skip them all
        return valid + b"\x98\x06\x01" * rng.choice([1, 1000, 100_000])
    # A length-delimited field 1 of 5 MiB (past the limit) or 3 MiB (within it).
    size = rng.choice([3, 5]) * 1024 * 1024
    return b"\x0a" + _varint(size) + b"a" * size


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _rpc(channel: grpc.Channel, method: str, payload: bytes, rng: random.Random
         ) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` with raw ``payload``; a streaming answer is read a little, then the
    call is cancelled or left to its deadline."""
    metadata = AUTH if rng.random() < 0.9 else rng.choice(
        [(), (("authorization", "Bearer " + "".join(  # the client sends printable ASCII only
            c for c in _text(rng) if " " <= c <= "~")[:100]),),
         (("authorization", "Basic x"),)])
    try:
        if method in UNARY:
            channel.unary_unary(method, request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)(
                payload, timeout=DEADLINE, metadata=metadata)
            return grpc.StatusCode.OK, ""
        call = channel.unary_stream(method, request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)(
            payload, timeout=rng.choice([0.2, 0.5]), metadata=metadata)
        if rng.random() < 0.5:
            next(call)
        call.cancel()
    except StopIteration:
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.CANCELLED, ""


def _live(fuzzed: Daemon, channel: grpc.Channel) -> tuple[_Live, list[grpc.Future]]:
    """Start a long call and a call that waits for approval; their ids."""
    execute = exec_pb2_grpc.ExecServiceStub(channel).Execute
    running = execute(iter([exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
        agent="dev", tool="shell", argv=["sleep", "60"]))]), timeout=120, metadata=AUTH)
    accepted = next(running).accepted
    waiting = execute(iter([exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
        agent="gate", tool="gated", argv=["echo", "gated"]))]), timeout=120, metadata=AUTH)
    request = next(waiting).approval_request
    return _Live(accepted.run_id, request.approval_id, request.plan_digest), [running, waiting]


def _still_serving(fuzzed: Daemon) -> None:
    """The daemon is alive and a valid call runs to its exit."""
    assert fuzzed.proc.poll() is None
    with fuzzed.client() as client:
        assert client.run(["echo", "still here"], agent="dev", tool="shell").stdout == (
            b"still here\n")


def test_no_malformed_call_to_another_service_ends_in_unknown_or_internal(
        fuzzed: Daemon) -> None:
    """ListAgents, the approval RPCs, the runs RPCs, Run and RunToExit: noise, mutated,
    many-field and huge requests, bad credentials, streams read a little then cancelled."""
    rng = random.Random(SEED + 2)
    since = len(fuzzed.stderr_lines)
    with grpc.insecure_channel(fuzzed.target) as channel, ThreadPoolExecutor(WORKERS) as pool:
        live, calls = _live(fuzzed, channel)

        def one(seed: int) -> tuple[str, grpc.StatusCode, str, bytes]:
            case = random.Random(seed)  # each case its own generator: threads draw in any order
            method = case.choice(UNARY + STREAMING)
            payload = _payload(method, live, case)
            return method, *_rpc(channel, method, payload, case), payload[:200]

        try:
            outcomes = list(pool.map(one, [rng.getrandbits(64) for _ in range(3 * CASES)]))
        finally:
            for call in calls:
                call.cancel()
    crashed = [outcome for outcome in outcomes if outcome[1] in CRASHES]
    assert crashed == []
    assert fuzzed.errors(since) == []
    _still_serving(fuzzed)


def test_a_valid_call_succeeds_after_the_fuzzing(fuzzed: Daemon) -> None:
    """Whatever came before, the daemon still serves (this module's last daemon test)."""
    _still_serving(fuzzed)


class _Failing:
    """Rate limiter and access step in one; access fails as a bug would, naming a path."""

    def check(self, principal: object) -> None:
        pass

    def agent_for(self, principal: object, agent: str) -> None:
        raise RuntimeError("unexpected state in /root/secret-place")


async def test_a_bug_in_a_step_is_unavailable_and_keeps_its_text_to_the_log() -> None:
    """The last-resort guard: an unexpected exception is neither UNKNOWN nor quoted."""
    failing: Any = _Failing()
    steps: Any = SimpleNamespace(access=failing, limiter=failing, policy=None)
    service = ExecService(Current(steps), cast(Any, None), cast(Any, None), cast(Any, None),
                          Audit())
    server = grpc.aio.server()
    exec_pb2_grpc.add_ExecServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = exec_pb2_grpc.ExecServiceStub(channel).Execute(iter([
                exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(agent="dev", argv=["true"]))]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
    finally:
        await server.stop(None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "incident" in (info.value.details() or "")
    assert "secret-place" not in (info.value.details() or "")
