"""Command tool calls against a real daemon: output, exit, limits, stdin, cleanup."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import psutil
import pytest

from execgate.client import (
    Client,
    CommandNotFoundError,
    Exited,
    ExitReason,
    OutputChunk,
    PolicyDeniedError,
    Started,
)
from tests.conftest import Daemon, writable_by_commands

BINARY = bytes(range(256)) * 4


def _sleeper() -> str:
    """A `sleep` argument no other process on the host has: it finds the job's processes
    from outside its pid namespace."""
    return f"{random.randint(1000, 9999)}.{random.randint(100000, 999999)}"


def _survivors(marker: str) -> list[psutil.Process]:
    """Processes still running `sleep <marker>`, once the kernel has finished killing."""
    found = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]
    _, alive = psutil.wait_procs(found, timeout=10)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _when_sleeping(count: int) -> str:
    """Shell that waits until ``count`` sleeps run in the job (its /proc shows only the
    job), so the test acts on an event, not on a guess of how long startup takes."""
    return (f"until [ $(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$') -ge {count} ]; "
            "do :; done")


def _running(marker: str) -> bool:
    return any(p.info["cmdline"] == ["sleep", marker] for p in psutil.process_iter(["cmdline"]))


def test_echo_round_trip_returns_exact_bytes(client: Client) -> None:
    result = client.run(["echo", "hi there"], agent="dev")
    assert (result.stdout, result.stderr, result.exit_code) == (b"hi there\n", b"", 0)
    assert result.reason is ExitReason.EXITED


def test_binary_output_is_byte_exact(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "blob.bin").write_bytes(BINARY)
    assert client.run(["cat", "blob.bin"], agent="dev").stdout == BINARY


def test_stdout_and_stderr_are_separate_with_offsets(client: Client) -> None:
    events = list(client.stream(["sh", "-c", "printf abc; printf XY >&2; printf def"],
                                agent="dev"))
    chunks = [e for e in events if isinstance(e, OutputChunk)]
    out = b"".join(c.data for c in chunks if c.stream == "stdout")
    err = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert (out, err) == (b"abcdef", b"XY")
    for stream in ("stdout", "stderr"):
        offset = 0
        for c in (c for c in chunks if c.stream == stream):
            assert c.offset == offset
            offset += len(c.data)
    exited = events[-1]
    assert isinstance(exited, Exited)
    assert (exited.stdout_bytes, exited.stderr_bytes) == (6, 2)


def test_accepted_plan_names_the_resolved_executable(client: Client, daemon: Daemon) -> None:
    first = next(iter(client.stream(["echo", "x"], agent="dev")))
    assert isinstance(first, Started)
    assert first.plan.executable in ("/usr/bin/echo", "/bin/echo")
    assert first.plan.argv == ("echo", "x")
    assert first.plan.cwd == str(daemon.workspace.resolve())
    assert first.plan.timeout == 20.0


def test_exit_code_is_passed_through(client: Client) -> None:
    assert client.run(["sh", "-c", "exit 3"], agent="dev").exit_code == 3


def test_killed_by_signal_reports_the_signal(client: Client) -> None:
    result = client.run(["sh", "-c", "kill -9 $$"], agent="dev")
    assert (result.reason, result.signal) == (ExitReason.SIGNALED, signal.SIGKILL)


def test_exit_reports_rusage_and_wall_time(client: Client) -> None:
    exited = client.run(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"],
                        agent="dev").exit
    assert exited.user_time + exited.system_time > 0
    assert exited.wall_time > 0
    assert exited.max_rss_bytes > 0


def test_timeout_stops_the_run_and_everything_it_started(client: Client) -> None:
    marker = _sleeper()
    result = client.run(["sh", "-c", f"sleep {marker} & {_when_sleeping(1)}; echo up; wait"],
                        agent="dev", timeout=2)
    assert result.stdout == b"up\n"
    assert result.reason is ExitReason.TIMEOUT
    assert _survivors(marker) == []


def test_setsid_and_double_fork_do_not_outlive_the_job(client: Client) -> None:
    marker = _sleeper()
    script = (f"(setsid sh -c 'sleep {marker} &' &); (sh -c 'sleep {marker} & exit 0' &); "
              f"{_when_sleeping(2)}; echo up")
    result = client.run(["sh", "-c", script], agent="dev", timeout=5)
    assert result.stdout == b"up\n"
    assert _survivors(marker) == []


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(client: Client) -> None:
    result = client.run(["sh", "-c", "trap '' TERM; echo ready; while :; do :; done"],
                        agent="dev", timeout=0.3)
    assert result.reason is ExitReason.TIMEOUT
    assert result.stdout == b"ready\n"
    assert result.signal == signal.SIGKILL


def test_output_past_the_limit_stops_the_run_and_counts_dropped(client: Client) -> None:
    result = client.run(["yes"], agent="dev")
    assert result.reason is ExitReason.OUTPUT_LIMIT
    assert len(result.stdout) == 1024 * 1024
    assert result.stdout == b"y\n" * (512 * 1024)
    assert result.exit.dropped_bytes > 0


def test_stdin_is_forwarded(client: Client) -> None:
    data = os.urandom(300_000)
    assert client.run(["cat"], agent="dev", stdin=data).stdout == data


def test_without_stdin_the_command_reads_end_of_file(client: Client) -> None:
    assert client.run(["cat"], agent="dev").stdout == b""


def test_the_daemons_environment_does_not_reach_the_command(tmp_path: Path) -> None:
    from tests.conftest import start_daemon
    d = start_daemon(tmp_path, env={"DAEMON_SECRET": "s3cr3t-value"})
    try:
        with d.client() as c:
            out = c.run(["env"], agent="dev").stdout
        names = {line.split(b"=", 1)[0] for line in out.splitlines()}
        assert b"s3cr3t-value" not in out
        assert names == {b"PATH", b"HOME", b"LANG", b"PWD", b"TMPDIR"}
    finally:
        d.stop()


def test_request_environment_reaches_the_command(client: Client) -> None:
    result = client.run(["sh", "-c", "echo $GREETING"], agent="dev", env={"GREETING": "hello"})
    assert result.stdout == b"hello\n"


def test_only_fds_0_1_2_reach_the_command(client: Client) -> None:
    assert client.run(["ls", "/proc/self/fd"], agent="dev").stdout.split() == [
        b"0", b"1", b"2", b"3"]  # 3 is ls's own handle on the directory


def test_cwd_inside_the_jail_is_used(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "sub").mkdir(exist_ok=True)
    result = client.run(["pwd"], agent="dev", cwd="sub")
    assert result.stdout.decode().strip() == str((daemon.workspace / "sub").resolve())


def test_denied_command_names_the_rule(client: Client) -> None:
    with pytest.raises(PolicyDeniedError) as info:
        client.run(["rm", "-rf", "."], agent="dev")
    assert info.value.rule == "tools.shell.denied_commands"


def test_allowed_command_missing_from_path_is_command_not_found(client: Client) -> None:
    with pytest.raises(CommandNotFoundError) as info:
        client.run(["missing-command-xyz"], agent="dev")
    assert info.value.rule == "server.path"


def test_denial_is_audited_with_its_rule(client: Client, daemon: Daemon) -> None:
    with pytest.raises(PolicyDeniedError):
        client.run(["wget", "http://example.invalid"], agent="dev")
    events = daemon.audit("call.denied", argv=["wget", "http://example.invalid"])
    assert events[-1]["rule"] == "tools.shell.deny_by_default"
    assert events[-1]["subject"] == "tester"


def test_a_run_is_audited_with_what_ran(client: Client, daemon: Daemon) -> None:
    run_id = client.run(["echo", "audited"], agent="dev").run_id
    started = daemon.audit("run.started", run_id=run_id)
    exited = daemon.audit("run.exited", run_id=run_id)
    assert started[0]["executable"] in ("/usr/bin/echo", "/bin/echo")
    assert exited[0]["reason"] == "EXITED"


def test_a_caller_going_away_kills_the_whole_job(client: Client) -> None:
    marker = _sleeper()
    script = f"setsid sleep {marker} & {_when_sleeping(1)}; echo go; wait"
    events = client.stream(["sh", "-c", script], agent="dev")
    for event in events:
        if isinstance(event, OutputChunk):
            break
    assert _running(marker)
    events.close()  # the caller stops reading: the call is cancelled
    assert _survivors(marker) == []


def test_a_grandchild_holding_stdout_does_not_hold_the_call(client: Client) -> None:
    # setsid puts the grandchild outside the process group; the call still ends.
    result = client.run(["sh", "-c", "setsid sleep 5 & echo done"], agent="dev", timeout=10)
    assert result.stdout == b"done\n"
    assert result.reason is ExitReason.EXITED


def test_calls_run_in_parallel(daemon: Daemon) -> None:
    """Eight calls each wait for all eight to have started: only parallel runs can finish."""
    marks = daemon.workspace / "marks"
    marks.mkdir(exist_ok=True)
    writable_by_commands(marks)
    script = ("touch marks/$ID; i=0; while [ $(ls marks | wc -l) -lt 8 ]; do "
              "i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.05; done")
    results: list[int] = []

    def call(i: int) -> None:
        with daemon.client() as c:
            results.append(c.run(["sh", "-c", script], agent="dev", env={"ID": str(i)}).exit_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 8


def test_500_quick_jobs_leave_no_zombies(client: Client, daemon: Daemon) -> None:
    """Every process is reaped: the sandbox helper reaps finished inits when idle, so
    zombies are waited for (bounded), and none may remain."""
    for _ in range(500):
        assert client.run(["sh", "-c", "true & true & wait"], agent="dev").exit_code == 0
    zombies = []
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child)
        except psutil.NoSuchProcess:
            pass  # reaped while we looked
    _, still = psutil.wait_procs(zombies, timeout=10)
    assert still == []
