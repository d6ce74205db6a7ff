"""Runs that outlive their connection: detach, attach with replay, list, cancel, signal,
idle timeout, and who may see a run, against a real daemon."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import (
    Client,
    Exited,
    ExitReason,
    NotFoundError,
    OutputChunk,
    RunResult,
    RunState,
    Started,
)
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon
from tests.integration.test_cli import execgate

OTHER_KEY = "other-caller-key-0123456789"
OPERATOR_KEY = "operator-key-0123456789"
POLICY = TEST_POLICY.replace("    max_output_bytes: 1MiB\n", "    max_output_bytes: 64MiB\n", 1
).replace("tools:\n", """\
runs:
  replay_bytes: 16MiB
  retention: ${RETENTION:-10m}
  operators: [{subject: operator}]
tools:
  quiet:
    type: command
    idle_timeout: 1s
    allowed_commands: [sh, sleep]
""", 1).replace("agents:\n", "agents:\n  idle:\n    tools: [quiet]\n", 1
).replace("""      - {name: tester, key: "${TEST_API_KEY}"}""", f"""\
      - {{name: tester, key: "${{TEST_API_KEY}}"}}
      - {{name: other, key: "{OTHER_KEY}"}}
      - {{name: operator, key: "{OPERATOR_KEY}"}}""", 1)
TEN_MIB = bytes(range(256)) * 4096 * 10
WRITE_TEN_MIB = ("import sys; b = bytes(range(256)) * 4096\n"
                 "for _ in range(10): sys.stdout.buffer.write(b)")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("runs"), POLICY)
    yield d
    d.stop()


def _stdout(events: Iterator[object]) -> tuple[bytes, Exited]:
    """The stdout of a stream of events, checked to be contiguous, and its exit."""
    out = bytearray()
    for event in events:
        if isinstance(event, OutputChunk) and event.stream == "stdout":
            assert event.offset == len(out) or not out  # in order, nothing twice
            out += event.data
        elif isinstance(event, Exited):
            return bytes(out), event
    raise AssertionError("no exit")


@pytest.fixture(scope="module")
def ten_mib_run(daemon: Daemon) -> str:
    """A detached run whose caller went away before it wrote its 10 MiB."""
    gate = daemon.workspace / "go"
    with daemon.client() as c:
        handle = c.start(["sh", "-c", f"echo begin; while [ ! -e go ]; do sleep 0.05; done; "
                                      f"python3 -c '{WRITE_TEN_MIB}'"], agent="dev")
    gate.touch()  # only now, with nobody connected, does it write
    return handle.id


def test_10_mib_written_after_the_caller_left_are_replayed_exactly_once(
        daemon: Daemon, ten_mib_run: str) -> None:
    with daemon.client() as c:
        out, exited = _stdout(c.attach(ten_mib_run))
    assert exited.reason is ExitReason.EXITED and exited.exit_code == 0
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(b"begin\n" + TEN_MIB).hexdigest()


def test_an_attach_from_a_middle_offset_gets_the_rest(daemon: Daemon, ten_mib_run: str) -> None:
    middle = 6 + 5 * 1024 * 1024
    with daemon.client() as c:
        events = list(c.attach(ten_mib_run, stdout_offset=middle))
    chunks = [e for e in events if isinstance(e, OutputChunk)]
    assert isinstance(events[0], Started) and events[0].run_id == ten_mib_run
    assert chunks[0].offset == middle
    assert b"".join(c.data for c in chunks) == TEN_MIB[middle - 6:]


def test_an_ended_run_is_attachable_within_its_retention(daemon: Daemon) -> None:
    with daemon.client() as c:
        handle = c.start(["echo", "done"], agent="dev")
        first = handle.wait()
        again = c.handle(handle.id).wait()
    assert first.stdout == again.stdout == b"done\n"
    assert again.exit.reason is ExitReason.EXITED


def test_an_ended_run_is_not_found_after_its_retention(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, POLICY, env={"RETENTION": "1s"})
    try:
        with d.client() as c:
            run_id = c.start(["true"], agent="dev").id
            d.audit("run.forgotten", run_id=run_id)
            with pytest.raises(NotFoundError):
                list(c.attach(run_id))
    finally:
        d.stop()


def test_another_principal_can_neither_attach_list_signal_nor_cancel_a_run(
        daemon: Daemon) -> None:
    with daemon.client() as owner, daemon.client(OTHER_KEY) as other:
        handle = owner.start(["sleep", "30"], agent="dev")
        try:
            for act in (lambda: list(other.attach(handle.id)),
                        lambda: other.signal(handle.id, signal.SIGTERM),
                        lambda: other.cancel(handle.id)):
                with pytest.raises(NotFoundError) as refused:
                    act()
                assert refused.value.error == "run_not_found"
            assert handle.id not in {r.run_id for r in other.runs()}
            assert {r.run_id: r.state for r in owner.runs()}[handle.id] is RunState.RUNNING
        finally:
            handle.cancel()


def test_an_operator_lists_and_cancels_anyones_run(daemon: Daemon) -> None:
    with daemon.client() as owner, daemon.client(OPERATOR_KEY) as operator:
        handle = owner.start(["sleep", "30"], agent="dev")
        assert handle.id in {r.run_id for r in operator.runs()}
        operator.cancel(handle.id)
        assert handle.wait().reason is ExitReason.CANCELLED
    assert daemon.audit("run.cancelled", run_id=handle.id)[0]["subject"] == "operator"


def test_an_unknown_run_id_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError):
        client.cancel("0" * 32)


def test_a_silent_command_ends_at_its_idle_timeout(client: Client) -> None:
    result = client.run(["sleep", "30"], agent="idle")
    assert result.reason is ExitReason.IDLE_TIMEOUT
    assert "without output" in result.exit.message


def test_a_chatty_command_outlives_its_idle_timeout(client: Client) -> None:
    """It writes every 0.3s for 2.4s: never a second without output."""
    result = client.run(["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.3; done"],
                        agent="idle")
    assert result.reason is ExitReason.EXITED
    assert result.stdout.split() == [str(i).encode() for i in range(1, 9)]


def _processes_with(marker: str) -> list[int]:
    """Pids of processes whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_cancel_kills_the_whole_tree(client: Client) -> None:
    handle = client.start(["sh", "-c", "sleep 311.5 & sleep 311.5 & echo up; wait"],
                          agent="dev")
    events = handle.events()
    assert any(isinstance(e, OutputChunk) and e.data == b"up\n" for e in events)
    assert len(_processes_with("311.5")) >= 2
    handle.cancel()
    assert _stdout(events)[1].reason is ExitReason.CANCELLED
    assert _processes_with("311.5") == []


def test_a_signal_reaches_the_commands_trap(client: Client) -> None:
    handle = client.start(["sh", "-c", "trap 'echo trapped; exit 7' USR1; echo ready; "
                                       "while :; do sleep 0.1; done"], agent="dev")
    events = handle.events()
    assert any(isinstance(e, OutputChunk) and e.data == b"ready\n" for e in events)
    handle.signal(signal.SIGUSR1)
    out, exited = _stdout(events)
    assert b"trapped" in out
    assert (exited.reason, exited.exit_code) == (ExitReason.EXITED, 7)


def _state_becomes(pid: int, state: str) -> bool:
    """Whether process ``pid`` reaches ``state`` (R, S, T ...) within ten seconds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == state:
                return True
        time.sleep(0.01)
    return False


def test_sigstop_and_sigcont_reach_the_command_not_its_init(client: Client) -> None:
    """A job's init cannot catch SIGSTOP: the daemon hands every signal but SIGKILL to the
    init as a message, and the init forwards it, so the command stops and resumes."""
    handle = client.start(["sleep", "312.5"], agent="dev")
    deadline = time.monotonic() + 10
    while not (pids := _processes_with("312.5")) and time.monotonic() < deadline:
        time.sleep(0.01)  # the command starts just after the call is accepted
    handle.signal(signal.SIGSTOP)
    assert _state_becomes(pids[0], "T")
    handle.signal(signal.SIGCONT)
    assert _state_becomes(pids[0], "S")
    handle.cancel()


def test_20_agents_at_once_all_finish_correctly(daemon: Daemon) -> None:
    """Floods, sleepers, quick calls and detached runs read again, from 20 threads."""
    def flood(c: Client) -> bool:
        return c.run(["head", "-c", "3000000", "/dev/zero"], agent="dev").stdout == bytes(
            3_000_000)

    def sleeper(c: Client) -> bool:
        return c.run(["sleep", "0.5"], agent="dev").exit_code == 0

    def quick(c: Client) -> bool:
        return all(c.run(["true"], agent="dev").exit_code == 0 for _ in range(5))

    def detached(c: Client) -> bool:
        handle = c.start(["sh", "-c", "echo one; sleep 0.3; echo two"], agent="dev")
        return c.handle(handle.id).wait().stdout == b"one\ntwo\n"

    kinds = [flood, sleeper, quick, detached]
    results: dict[int, object] = {}

    def agent(i: int) -> None:
        with daemon.client(API_KEY if i % 2 else OTHER_KEY) as c:
            try:
                results[i] = kinds[i % 4](c)
            except Exception as exc:
                results[i] = exc

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(20), True)


def test_a_handles_wait_returns_the_run_result(client: Client) -> None:
    result = client.start(["echo", "hi"], agent="dev").wait()
    assert isinstance(result, RunResult) and result.stdout == b"hi\n"


def test_the_cli_detaches_lists_signals_attaches_and_cancels(daemon: Daemon) -> None:
    """run --detach prints the id; runs lists it; signal reaches its trap; attach copies its
    output and exits with its status; cancel of an ended run is still an answer."""
    script = "trap 'echo bye; exit 5' USR1; echo ready; while :; do sleep 0.1; done"
    run_id = execgate(daemon, "run", "--agent", "dev", "--detach", "--", "sh", "-c",
                      script).stdout.decode().strip()
    assert run_id in execgate(daemon, "runs").stdout.decode()
    with daemon.client() as c:  # wait until its trap is set before signalling
        assert any(isinstance(e, OutputChunk) and e.data == b"ready\n"
                   for e in c.attach(run_id))
    assert execgate(daemon, "signal", run_id, "USR1").returncode == 0
    attached = execgate(daemon, "attach", run_id)
    assert (attached.returncode, attached.stdout) == (5, b"ready\nbye\n")
    assert execgate(daemon, "cancel", run_id).returncode == 0


def test_the_cli_says_a_run_it_cannot_see_is_not_there(daemon: Daemon) -> None:
    assert execgate(daemon, "cancel", "0" * 32).returncode == 1


@pytest.mark.parametrize("program", ["execgate.client._cli", "execgate.daemon.cli"])
def test_both_clis_print_their_version(program: str) -> None:
    result = subprocess.run([sys.executable, "-m", program, "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.split()[1] == importlib.metadata.version("execgate")


def test_the_readmes_agent_restart_example_reattaches_by_id(daemon: Daemon,
                                                             tmp_path: Path) -> None:
    """The agent is killed right after it started its run; started again, it finds the run
    by the id it kept and gets the whole output and the end."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("## Runs that outlive a connection", 1)[1].split(
        "```python\n", 1)[1].split("```", 1)[0]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")},
           "EXECGATE_TARGET": daemon.target, "EXECGATE_TOKEN": API_KEY}
    first = subprocess.Popen([sys.executable, "-c", example], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    started = first.stdout.readline()
    first.kill()  # the agent dies with its run going
    first.wait()
    first.stdout.close()
    assert started.startswith("started ")
    again = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.stdout == "step 1\nstep 2\nstep 3\n"
    assert not (tmp_path / "run-id").exists()
