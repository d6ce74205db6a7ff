"""examples/agent_loop.py runs as its docstring says, against a real daemon on its policy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, start_daemon, writable_by_commands

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def example_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon on the example's own policy (cgroups as this host has them)."""
    policy = (EXAMPLES / "policy.yaml").read_text() + "sandbox: {cgroup: optional}\n"
    d = start_daemon(tmp_path_factory.mktemp("example"), policy)
    writable_by_commands(d.workspace)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def transcript(example_daemon: Daemon) -> list[str]:
    """What the example prints, line by line."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "agent_loop.py")],
                          env={**os.environ, "EXECGATE_TARGET": example_daemon.target,
                               "EXECGATE_TOKEN": ""},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_the_example_runs_an_allowed_call(transcript: list[str]) -> None:
    assert transcript[0].endswith("-> exited hello from the sandbox")


def test_the_example_gets_a_denied_call_as_an_answer(transcript: list[str]) -> None:
    assert transcript[1].endswith("-> policy_denied tools.shell.denied_commands")


def test_the_example_approves_a_call(transcript: list[str], example_daemon: Daemon) -> None:
    assert transcript[2].startswith("human approves: Run touch notes.txt")
    assert transcript[3].endswith("-> exited")
    assert (example_daemon.workspace / "notes.txt").exists()


def test_the_example_sees_a_call_time_out(transcript: list[str]) -> None:
    assert transcript[4].endswith("-> timeout")


def test_the_model_ends_the_loop(transcript: list[str]) -> None:
    assert transcript[5] == "model: done: exited, policy_denied, exited, timeout"
