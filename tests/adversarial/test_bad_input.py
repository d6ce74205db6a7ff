"""Malformed requests get a clear error and leave the daemon serving everyone else."""

from __future__ import annotations

import grpc
import pytest

from execgate.client import (
    Client,
    InvalidArgumentError,
    NotFoundError,
    PolicyDeniedError,
    RateLimitedError,
    _client,
)
from execgate.v1 import exec_pb2
from tests.conftest import API_KEY, Daemon

METHOD = "/execgate.v1.ExecService/Execute"


CRASHES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@pytest.fixture(autouse=True)
def _daemon_still_serves(client: Client):  # type: ignore[no-untyped-def]
    """After every bad request, an ordinary call still works."""
    yield
    assert client.run(["echo", "still here"], agent="dev").stdout == b"still here\n"


@pytest.fixture(autouse=True)
def _no_crash(daemon: Daemon):  # type: ignore[no-untyped-def]
    """A bad request is refused, never a crash: a handler that raised would have answered
    UNKNOWN and logged its traceback (or, behind the last-resort guard, an error line)."""
    since = len(daemon.stderr_lines)
    yield
    assert daemon.errors(since) == []


@pytest.fixture(autouse=True)
def _no_unknown_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every status the client turns into an exception here is a named refusal."""
    original = _client.from_rpc_error

    def checked(error: grpc.RpcError) -> Exception:
        assert error.code() not in CRASHES, error  # type: ignore[attr-defined]
        return original(error)

    monkeypatch.setattr(_client, "from_rpc_error", checked)


def _raw_call(daemon: Daemon, *messages: bytes) -> grpc.RpcError:
    """Send hand-made bytes on an Execute stream; return the error the daemon answers with."""
    with grpc.insecure_channel(daemon.target) as channel:
        execute = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            list(execute(iter(messages), metadata=(("authorization", f"Bearer {API_KEY}"),)))
    assert info.value.code() not in CRASHES, info.value  # type: ignore[attr-defined]
    return info.value


def test_empty_argv_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="argv is empty"):
        client.run([], agent="dev", tool="shell")


def test_nul_byte_in_an_argument_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="NUL"):
        client.run(["echo", "a\0b"], agent="dev")


def test_nul_byte_in_an_env_key_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="not a valid name"):
        client.run(["true"], agent="dev", env={"A\0B": "x"})


def test_equals_sign_in_an_env_key_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="not a valid name"):
        client.run(["true"], agent="dev", env={"A=B": "x"})


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "ld_preload", "PYTHONPATH",
                                  "NODE_OPTIONS", "BASH_ENV", "GIT_SSH_COMMAND",
                                  "npm_config_script_shell"])
def test_env_that_changes_what_runs_is_denied(client: Client, name: str) -> None:
    with pytest.raises(PolicyDeniedError, match=name) as info:
        client.run(["true"], agent="dev", env={name: "/tmp/evil"})
    assert info.value.rule == "tools.shell.env"


def test_unknown_agent_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError, match="no agent named 'nobody'"):
        client.run(["true"], agent="nobody")


def test_unknown_tool_is_not_found_and_lists_the_agents_tools(client: Client) -> None:
    with pytest.raises(NotFoundError, match="its tools: shell, read_file"):
        client.run(["true"], agent="dev", tool="nothing")


def test_a_10_mb_argument_is_refused(client: Client) -> None:
    with pytest.raises(RateLimitedError):  # RESOURCE_EXHAUSTED: over the message size limit
        client.run(["echo", "x" * 10_000_000], agent="dev")


def test_an_argument_over_the_kernels_limit_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="argv\\[1\\] is 200000 bytes"):
        client.run(["echo", "x" * 200_000], agent="dev")


def test_invalid_utf8_in_argv_is_refused(daemon: Daemon) -> None:
    start = exec_pb2.StartCall(agent="dev", argv=["echo", "PLACEHOLDER"])
    raw = exec_pb2.ExecuteRequest(start=start).SerializeToString()
    bad = raw.replace(b"PLACEHOLDER", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5")
    error = _raw_call(daemon, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad UTF-8" in (error.details() or "")


@pytest.mark.parametrize("cwd", ["../../etc", "/etc", "/", "..", "sub/../.."])
def test_cwd_outside_the_jail_is_denied(client: Client, cwd: str) -> None:
    with pytest.raises(PolicyDeniedError) as info:
        client.run(["ls"], agent="dev", cwd=cwd)
    assert info.value.rule == "tools.shell.working_directory"


def test_cwd_symlinked_out_of_the_jail_is_denied(client: Client, daemon: Daemon) -> None:
    link = daemon.workspace / "escape"
    if not link.is_symlink():
        link.symlink_to("/etc")
    with pytest.raises(PolicyDeniedError):
        client.run(["ls"], agent="dev", cwd="escape")


def test_a_negative_timeout_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="timeout"):
        client.run(["true"], agent="dev", timeout=-1)


@pytest.mark.parametrize("timeout", [0, 1e9])
def test_zero_or_huge_timeout_means_the_tools_maximum(client: Client, timeout: float) -> None:
    assert client.run(["true"], agent="dev", timeout=timeout).plan.timeout == 20.0


def test_first_message_that_is_not_start_is_invalid(daemon: Daemon) -> None:
    error = _raw_call(daemon, exec_pb2.ExecuteRequest(stdin=b"hi").SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in (error.details() or "")


def test_second_start_on_one_stream_is_invalid(daemon: Daemon) -> None:
    start = exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(agent="dev", argv=["sleep", "5"]))
    error = _raw_call(daemon, start.SerializeToString(), start.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "second start" in (error.details() or "")


def test_garbage_bytes_are_refused(daemon: Daemon) -> None:
    error = _raw_call(daemon, b"\xff" * 64)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["LS", "ls ", " ls", "ｌｓ", "l\u0073\u200b"])
def test_command_names_match_exactly(client: Client, name: str) -> None:
    with pytest.raises(PolicyDeniedError):
        client.run([name], agent="dev")


@pytest.mark.parametrize("name", ["/bin/ls", "./ls", "../bin/ls", "bin/sh"])
def test_argv0_must_be_a_bare_name(client: Client, name: str) -> None:
    with pytest.raises(PolicyDeniedError, match="bare command name"):
        client.run([name], agent="dev")
