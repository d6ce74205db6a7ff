"""Malformed Execute streams, from a fixed seed: every one ends in a status that names the
caller's mistake (or a refusal), never UNKNOWN or INTERNAL, and the daemon logs no error."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from execgate.daemon.audit import Audit
from execgate.daemon.services import ExecService
from execgate.daemon.snapshot import Current
from execgate.v1 import exec_pb2, exec_pb2_grpc
from tests.conftest import API_KEY, Daemon, start_daemon

SEED = 20260830
CASES = 800
DEADLINE = 5.0
"""Seconds per case: a mutated call that runs may wait for stdin the fuzzer never sends."""
METHOD = "/execgate.v1.ExecService/Execute"
CRASHES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
FUNCTIONS = ("read_file", "list_directory", "grep_search", "write_file")

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
                                   ["ops", "helper", _text(rng)]),
                               tool=rng.choice(["", "shell", *FUNCTIONS, _text(rng)]))
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
                        "huge"])
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


def _cases() -> Iterator[Messages]:
    rng = random.Random(SEED)
    for _ in range(CASES):
        yield _case(rng)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("fuzz"))
    (d.workspace / "small.txt").write_text("hello\n")
    yield d
    d.stop()


def _send(execute: Callable[..., object], messages: Messages) -> grpc.StatusCode:
    call = execute(iter(messages), timeout=DEADLINE,
                   metadata=(("authorization", f"Bearer {API_KEY}"),))
    try:
        for _ in call:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


def test_no_malformed_stream_ends_in_unknown_or_internal(fuzzed: Daemon) -> None:
    crashed: list[tuple[grpc.StatusCode, Messages]] = []
    with grpc.insecure_channel(fuzzed.target) as channel:
        execute = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        for messages in _cases():
            code = _send(execute, messages)
            if code in CRASHES:
                crashed.append((code, messages))
    assert crashed == []
    assert fuzzed.errors() == []


def test_cancelled_streams_leave_no_error_behind(fuzzed: Daemon) -> None:
    """A caller that cancels mid-call, at any point, is not the daemon's error."""
    rng = random.Random(SEED + 1)
    with grpc.insecure_channel(fuzzed.target) as channel:
        execute = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        for _ in range(50):
            start = exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
                agent="dev", argv=["sh", "-c", "echo up; exec sleep 60"]))
            call = execute(iter([start.SerializeToString()]), timeout=DEADLINE,
                           metadata=(("authorization", f"Bearer {API_KEY}"),))
            for _ in range(rng.randrange(3)):  # cancel before, at or after the first reply
                next(call)
            call.cancel()
    assert fuzzed.errors() == []


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
