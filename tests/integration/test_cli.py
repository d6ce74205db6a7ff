"""``execgate`` as a shell user runs it: byte-exact output and meaningful exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY, Daemon, start_daemon


def execgate(daemon: Daemon, *args: str, token: str | None = API_KEY, stdin: bytes = b"",
             cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")}
    env["EXECGATE_TARGET"] = daemon.target
    if token is not None:
        env["EXECGATE_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "execgate.client._cli", *args], input=stdin,
                          capture_output=True, env=env, timeout=60, cwd=cwd)


def test_run_copies_output_byte_exact(daemon: Daemon) -> None:
    (daemon.workspace / "all-bytes").write_bytes(bytes(range(256)))
    result = execgate(daemon, "run", "--agent", "dev", "--", "cat", "all-bytes")
    assert (result.returncode, result.stdout) == (0, bytes(range(256)))


def test_run_keeps_stderr_apart(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--agent", "dev", "--", "sh", "-c", "echo o; echo e >&2")
    assert (result.stdout, result.stderr) == (b"o\n", b"e\n")


def test_run_exits_with_the_commands_code(daemon: Daemon) -> None:
    assert execgate(daemon, "run", "--agent", "dev", "--", "sh", "-c", "exit 7").returncode == 7


def test_run_exits_128_plus_the_signal(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--agent", "dev", "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + 15


def test_run_exits_124_on_timeout(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--agent", "dev", "--timeout", "0.2", "--", "sleep", "10")
    assert result.returncode == 124
    assert b"deadline" in result.stderr


def test_run_exits_126_when_the_policy_denies(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--agent", "dev", "--", "rm", "-rf", ".")
    assert result.returncode == 126
    assert b"tools.shell.denied_commands" in result.stderr


def test_run_exits_126_when_a_rule_refuses_the_cwd(daemon: Daemon) -> None:
    """A cwd through a symlink loop is invalid input, refused by the jail's rule: 126."""
    loop = daemon.workspace / "cli-loop"
    if not loop.is_symlink():
        loop.symlink_to("cli-loop")
    result = execgate(daemon, "run", "--agent", "dev", "--cwd", "cli-loop", "--", "ls")
    assert result.returncode == 126
    assert b"tools.shell.working_directory" in result.stderr


def test_run_exits_127_when_the_command_is_not_on_the_path(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--agent", "dev", "--", "missing-command-xyz")
    assert result.returncode == 127


def test_run_exits_125_when_unauthenticated(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--agent", "dev", "--", "true", token="nope")
    assert result.returncode == 125
    assert result.stderr.startswith(b"execgate: unauthenticated: ")


def test_run_exits_125_when_the_daemon_is_unreachable(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    d.stop()
    result = execgate(d, "run", "--agent", "dev", "--", "true")
    assert result.returncode == 125
    assert b"unavailable" in result.stderr


def test_run_forwards_stdin_when_asked(daemon: Daemon) -> None:
    data = os.urandom(200_000)
    result = execgate(daemon, "run", "--agent", "dev", "-i", "--", "cat", stdin=data)
    assert result.stdout == data


def test_run_without_a_command_is_a_usage_error(daemon: Daemon) -> None:
    assert execgate(daemon, "run", "--agent", "dev").returncode == 125


def test_run_lists_the_agents_when_the_choice_is_ambiguous(daemon: Daemon) -> None:
    result = execgate(daemon, "run", "--", "true")
    assert result.returncode == 125
    assert b"dev, ops" in result.stderr


def test_call_runs_a_function_tool(daemon: Daemon) -> None:
    execgate(daemon, "call", "--agent", "dev", "write_file", "path=cli.txt", "content=from cli")
    result = execgate(daemon, "call", "--agent", "dev", "read_file", "path=cli.txt")
    assert (result.returncode, result.stdout) == (0, b"from cli")


def test_call_reports_a_tool_error_with_status_1(daemon: Daemon) -> None:
    result = execgate(daemon, "call", "--agent", "dev", "read_file", "path=nothing-here")
    assert result.returncode == 1
    assert b"no such file" in result.stderr


def test_agents_lists_what_the_caller_sees(daemon: Daemon) -> None:
    lines = execgate(daemon, "agents").stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["dev", "ops"]


@pytest.fixture
def default_daemon(tmp_path: Path) -> Daemon:
    d = start_daemon(tmp_path, policy=None)
    yield d  # type: ignore[misc]
    d.stop()


def test_default_serve_creates_its_workspace_and_a_private_token(default_daemon: Daemon) -> None:
    assert default_daemon.workspace.is_dir()
    token = default_daemon.root / "state" / "execgate" / "token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.parent.stat().st_mode & 0o777 == 0o700


def test_execgate_finds_the_default_token_by_itself(default_daemon: Daemon) -> None:
    (default_daemon.workspace / "hello.txt").write_text("hi\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")}
    env["XDG_STATE_HOME"] = str(default_daemon.root / "state")
    result = subprocess.run(
        [sys.executable, "-m", "execgate.client._cli", "run", "--target", default_daemon.target,
         "--", "cat", "hello.txt"], capture_output=True, env=env, timeout=60)
    assert (result.returncode, result.stdout) == (0, b"hi\n")


def test_default_serve_refuses_callers_without_the_token(default_daemon: Daemon) -> None:
    result = execgate(default_daemon, "run", "--", "cat", "x", token="")
    assert result.returncode == 125
    assert b"unauthenticated" in result.stderr


def test_default_policy_denies_writing_commands(default_daemon: Daemon) -> None:
    import json
    stored = json.loads((default_daemon.root / "state" / "execgate" / "token").read_text())
    result = execgate(default_daemon, "run", "--", "touch", "x",
                      token=stored["tokens"][default_daemon.target])
    assert result.returncode == 126


def test_rate_limited_calls_exit_125_with_the_rule(tmp_path: Path) -> None:
    from tests.conftest import TEST_POLICY
    policy = TEST_POLICY.replace("server:\n", "server:\n  rate_limiting: {enabled: true, "
                                 "requests_per_minute: 1, burst: 2, per_user: true}\n", 1)
    d = start_daemon(tmp_path, policy)
    try:
        for _ in range(2):
            assert execgate(d, "run", "--agent", "dev", "--", "true").returncode == 0
        result = execgate(d, "run", "--agent", "dev", "--", "true")
        assert result.returncode == 125
        assert b"server.rate_limiting" in result.stderr
    finally:
        d.stop()
