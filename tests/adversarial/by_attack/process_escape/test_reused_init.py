"""Reaching the next job through a reused init: an init runs the jobs of its tool one after
another, so whatever a job leaves in it (processes, files in its private /tmp, limits and
priorities set on the init from outside) must never reach the job after it. Checked from
the next job, and from the host's process table."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from execgate.client import ExitReason, OutputChunk
from tests.adversarial.by_attack._outside import processes_with, sleep_marker
from tests.conftest import Daemon, start_daemon, writable_by_commands

POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
tools:
  shell:
    type: command
    working_directory: ./workspace
    allowed_commands: [sh, cut, prlimit, renice, taskset, ionice, sleep, ls, touch]
agents:
  dev:
    tools: [shell]
server:
  auth:
    enabled: true
    api_keys:
      - {name: tester, key: "${TEST_API_KEY}"}
logger: {level: info, format: json}
"""

INHERITED = "ulimit -n; ulimit -s; nice; taskset -p $$ | cut -d: -f2; ionice -p $$"
"""What a job inherits from its init and can read of itself."""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("reused-init"), POLICY)
    yield d
    d.stop()


def _ran(daemon: Daemon, script: str) -> bool:
    """Whether ``script`` ran (and was not refused by the sandbox)."""
    with daemon.client() as c:
        result = c.run(["sh", "-c", script], agent="dev", tool="shell", timeout=10)
    return result.exit.reason is ExitReason.EXITED


def _sh(daemon: Daemon, script: str) -> tuple[int, str]:
    """``script``'s exit code and stdout; it must have run, not been refused."""
    with daemon.client() as c:
        result = c.run(["sh", "-c", script], agent="dev", tool="shell", timeout=10, text=True)
    assert result.exit.reason is ExitReason.EXITED, result.exit
    return result.exit_code, result.stdout


def _init_start(daemon: Daemon) -> str:
    """When the job's init (pid 1 of its namespace) started: the same value, the same init."""
    code, out = _sh(daemon, "cut -d' ' -f22 /proc/1/stat")
    assert code == 0
    return out


def test_consecutive_short_jobs_run_in_one_warm_init(daemon: Daemon) -> None:
    """What makes a short command cheap: no init is made per call once a tool is warm."""
    starts = [_init_start(daemon) for _ in range(6)]
    assert len(set(starts[-3:])) == 1, starts


def test_a_file_left_in_tmp_is_not_seen_by_the_next_job(daemon: Daemon) -> None:
    """Temp-file squatting (CWE-377): a job plants files in /tmp and /dev/shm for the next
    caller of the same tool to read or trust."""
    code, _ = _sh(daemon, "echo planted > /tmp/left && echo planted > /dev/shm/left")
    assert code == 0
    code, out = _sh(daemon, "ls -A /tmp /dev/shm")
    assert code == 0
    assert "left" not in out


def test_nothing_of_a_job_runs_once_its_exit_is_reported(daemon: Daemon) -> None:
    """A background process meant to wait for the next job in the same init: it is gone
    before the exit reaches the caller, not some time after."""
    marker = sleep_marker()
    code, _ = _sh(daemon, f"sleep {marker} >/dev/null 2>&1 & exit 0")
    assert code == 0
    assert not processes_with(marker)


def test_a_job_lowering_its_inits_limits_does_not_reach_the_next_job(daemon: Daemon) -> None:
    """prlimit(2) on pid 1: a process may change the rlimits of another of its own user's,
    which the next job would inherit (util-linux prlimit --pid)."""
    before = _sh(daemon, INHERITED)
    _sh(daemon, "prlimit --pid 1 --nofile=16:16 --stack=65536:65536")
    assert _sh(daemon, INHERITED) == before


def test_a_job_renicing_its_init_does_not_reach_the_next_job(daemon: Daemon) -> None:
    """setpriority(2) and sched_setaffinity(2) on pid 1, which the next job would inherit
    (renice -p, taskset -p). Where the kernel lets the job do it (as root it does; an init
    with capabilities in its user namespace may be out of reach), the next job is unchanged."""
    before = _sh(daemon, INHERITED)
    _sh(daemon, "renice -n 19 -p 1; taskset -p 1 1")
    assert _sh(daemon, INHERITED) == before


def test_a_job_lowering_its_inits_io_priority_does_not_reach_the_next_job(
        daemon: Daemon) -> None:
    """ioprio_set(2) on pid 1 needs only the same user, whatever the dumpable flag says, and
    a child inherits it (ionice -c 3 -p)."""
    before = _sh(daemon, INHERITED)
    _sh(daemon, "ionice -c 3 -p 1")
    assert _sh(daemon, INHERITED) == before


def test_a_workspace_replaced_on_the_host_is_used_from_the_next_calls_on(
        daemon: Daemon) -> None:
    """An init binds the jail as it was when it was made: a job refused because its working
    directory changed retires the init, so that calls go on in the new directory (a stale
    init never keeps a tool broken). The workspace is replaced while a job runs in an init
    that bound the old one."""
    with daemon.client() as c:
        running = c.start(["sh", "-c", "echo up; sleep 0.5"], agent="dev", tool="shell")
        events = running.events()
        while not isinstance(next(events), OutputChunk):
            pass  # up: it runs in its directory
        old = daemon.workspace.rename(daemon.root / "workspace.old")
        daemon.workspace.mkdir()
        writable_by_commands(daemon.workspace)
        assert running.wait().exit.reason is ExitReason.EXITED
    outcomes = [_ran(daemon, "touch made-here") for _ in range(6)]
    assert all(outcomes[3:]), outcomes  # refused at most by the inits that bound the old one
    assert (daemon.workspace / "made-here").exists()
    assert not (old / "made-here").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a directory the commands' user cannot "
                    "traverse, which only root can make for another user")
def test_a_working_directory_its_user_cannot_reach_is_refused_as_such(daemon: Daemon) -> None:
    """The init resolves the working directory as the command's user: a directory below one
    it may not traverse is refused for that reason, not reported as swapped."""
    private = daemon.workspace / "private"
    (private / "sub").mkdir(parents=True)
    private.chmod(0o700)
    with daemon.client() as c:
        result = c.run(["ls"], agent="dev", tool="shell", cwd="private/sub")
    assert result.exit.reason is ExitReason.SANDBOX_ERROR
    assert "cannot reach its working directory" in result.exit.message
