"""Process escape: a job's processes outliving their run, reaching processes outside it, or
gaining privileges. Checked from outside: the host's process table, a host process that
must survive, the host's mounts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from execgate.client import Started
from tests.adversarial.by_attack._outside import processes_with, sleep_marker
from tests.conftest import Daemon, start_daemon

POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
tools:
  shell:
    type: command
    working_directory: ./workspace
    kill_grace: 1s
    allowed_commands: [sh, setsid, nohup, sleep, python3, kill, mount, su]
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


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("process-escape"), POLICY)
    yield d
    d.stop()


def _gone(marker: str) -> bool:
    """Whether every host process with ``marker`` ends: the run's exit is reported when its
    command exits, and what it left behind is ended with its pid namespace or job cgroup
    right after (a process is waited for, never slept on)."""
    left = []
    for pid in processes_with(marker):
        with contextlib.suppress(psutil.NoSuchProcess):
            left.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(left, timeout=10)
    return not alive


def _ran(daemon: Daemon, script: str, marker: str) -> None:
    """Run ``script``; no process of it (``marker``) outlives the run."""
    with daemon.client() as c:
        c.run(["sh", "-c", script], agent="dev", tool="shell", timeout=10)
    assert _gone(marker)


def test_a_setsid_daemonised_child_ends_with_its_run(daemon: Daemon) -> None:
    """setsid + background: the classic way out of a process group (GTFOBins setsid)."""
    marker = sleep_marker()
    _ran(daemon, f"setsid sleep {marker} >/dev/null 2>&1 < /dev/null &", marker)


def test_a_double_forked_orphan_ends_with_its_run(daemon: Daemon) -> None:
    """Double fork: the grandchild is re-parented and no longer the run's child."""
    marker = sleep_marker()
    _ran(daemon, f"(sleep {marker} >/dev/null 2>&1 &) ; exit 0", marker)


def test_a_nohup_child_ends_with_its_run(daemon: Daemon) -> None:
    """GTFOBins nohup: ignoring SIGHUP to survive the session's end."""
    marker = sleep_marker()
    _ran(daemon, f"nohup sleep {marker} >/dev/null 2>&1 &", marker)


def test_a_child_ignoring_sigterm_ends_with_its_run(daemon: Daemon) -> None:
    """A trap on TERM (and HUP): stopping politely is not enough."""
    marker = sleep_marker()
    _ran(daemon, f"sh -c 'trap \"\" TERM HUP; exec sleep {marker}' & exit 0", marker)


def test_a_cancelled_run_leaves_no_process(daemon: Daemon) -> None:
    """The caller goes away while a tree of processes runs."""
    marker = sleep_marker()
    with daemon.client() as c:
        events = c.stream(["sh", "-c", f"sleep {marker} & sleep {marker}"], agent="dev",
                          tool="shell")
        first = next(events)
        assert isinstance(first, Started)
        events.close()
    daemon.audit("run.exited", run_id=first.run_id)
    assert _gone(marker)


def test_kill_minus_one_does_not_reach_host_processes(daemon: Daemon, tmp_path: Path) -> None:
    """`kill -9 -1` signals every process the user may signal: with jobs as the daemon's
    user (unprivileged), that is every process of the daemon's user outside a pid
    namespace."""
    host = psutil.Popen(["sleep", sleep_marker()])
    try:
        with daemon.client() as c:
            c.run(["kill", "-9", "-1"], agent="dev", tool="shell")
        assert host.is_running() and host.status() != psutil.STATUS_ZOMBIE
        assert daemon.proc.poll() is None
    finally:
        host.kill()
        host.wait()


def test_a_job_cannot_see_the_daemon_to_attach_to_it(daemon: Daemon) -> None:
    """ptrace/process_vm_readv on the daemon to read its keys: the job cannot even name it
    (its own pid namespace), and PR_SET_NO_NEW_PRIVS plus no capabilities forbid the rest."""
    code = (f"import os; print(os.path.exists('/proc/{daemon.proc.pid}/environ') and "
            f"'{daemon.proc.pid}' in os.listdir('/proc'))")
    with daemon.client() as c:
        r = c.run(["python3", "-c", code], agent="dev", tool="shell")
    assert r.stdout == b"False\n"


def test_mounting_over_the_jail_fails_and_the_host_mounts_are_unchanged(
        daemon: Daemon) -> None:
    """A job remounting to lift its read-only view (container breakout by mount)."""
    before = Path("/proc/self/mounts").read_text()
    with daemon.client() as c:
        r = c.run(["mount", "-t", "tmpfs", "none", "/tmp"], agent="dev", tool="shell")
    assert r.exit_code != 0
    assert Path("/proc/self/mounts").read_text() == before


def test_a_setuid_binary_gives_no_privilege(daemon: Daemon) -> None:
    """GTFOBins SUID: no_new_privs makes setuid bits inert, so `su` cannot become root."""
    with daemon.client() as c:
        r = c.run(["su", "-c", "id -u", "root"], agent="dev", tool="shell", timeout=10)
    assert r.stdout.strip() != b"0"
    assert r.exit_code != 0
