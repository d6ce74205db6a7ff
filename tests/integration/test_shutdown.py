"""A daemon told to stop says so: running jobs end as DAEMON_STOPPING, pending approvals are
withdrawn at once, and an expected stop logs no error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import (
    ApprovalRequested,
    Event,
    Exited,
    ExitReason,
    OutputChunk,
    Started,
    UnavailableError,
)
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

APPROVAL_POLICY = TEST_POLICY.replace("    denied_commands: [rm]\n",
                                      "    denied_commands: [rm]\n"
                                      "    require_approval_for: [touch]\n")
RUNNING = ["sh", "-c", "echo up; exec sleep 60"]


def _running(events: Iterator[Event]) -> str:
    """The run id, once the command has said it is up."""
    started = next(events)
    assert isinstance(started, Started)
    assert isinstance(next(events), OutputChunk)
    return started.run_id


def _exited(events: Iterator[Event]) -> Exited:
    last = list(events)[-1]
    assert isinstance(last, Exited)
    return last


def _exit_status(d: Daemon) -> int:
    """How the daemon ended by itself (a second SIGTERM would muddle it)."""
    status = d.proc.wait(timeout=30)
    d.stop()
    return status


def test_sigterm_ends_a_running_job_as_daemon_stopping(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    with d.client() as client:
        events = client.stream(RUNNING, agent="dev")
        run_id = _running(events)
        d.proc.send_signal(signal.SIGTERM)
        exited = _exited(events)
    assert exited.reason is ExitReason.DAEMON_STOPPING
    assert "daemon is stopping" in exited.message
    assert [e["reason"] for e in d.audit("run.exited", run_id=run_id)] == ["DAEMON_STOPPING"]
    assert _exit_status(d) == 0


def test_sigterm_to_the_daemons_process_group_is_not_an_error(tmp_path: Path) -> None:
    """The sandbox helper shares the daemon's group: the daemon, not the signal, stops it."""
    d = start_daemon(tmp_path, own_group=True)
    with d.client() as client:
        events = client.stream(RUNNING, agent="dev")
        _running(events)
        os.killpg(d.proc.pid, signal.SIGTERM)
        assert _exited(events).reason is ExitReason.DAEMON_STOPPING
    assert _exit_status(d) == 0
    assert d.errors() == []


def test_sigterm_withdraws_a_pending_approval_at_once(tmp_path: Path) -> None:
    """The caller hears that the daemon is stopping, not that a grace ran out."""
    d = start_daemon(tmp_path, APPROVAL_POLICY)
    with d.client() as client:
        events = client.stream(["touch", "approved"], agent="dev", on_approval=lambda r: None)
        assert isinstance(next(events), ApprovalRequested)
        d.proc.send_signal(signal.SIGTERM)
        with pytest.raises(UnavailableError, match="daemon is stopping"):
            list(events)
    withdrawn = d.audit("approval.withdrawn")
    assert [w["reason"] for w in withdrawn] == ["the daemon is stopping"]
    assert _exit_status(d) == 0
    assert not (d.workspace / "approved").exists()


def test_the_cli_exits_125_when_the_daemon_stops_its_run(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")}
    env |= {"EXECGATE_TARGET": d.target, "EXECGATE_TOKEN": API_KEY}
    cli = subprocess.Popen([sys.executable, "-m", "execgate.client._cli", "run", "--agent",
                            "dev", "--", *RUNNING], env=env, stdout=subprocess.PIPE)
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"  # the command runs
    d.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=30) == 125
    cli.stdout.close()
    assert _exit_status(d) == 0
