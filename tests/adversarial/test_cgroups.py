"""Job cgroups: tools with different limits share the pool, and no daemon leaves its
cgroups behind (a SIGKILLed one leaves them for the next start to remove)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from execgate.client import ExitReason
from tests.conftest import HAS_CGROUP, Daemon, start_daemon

pytestmark = pytest.mark.skipif(
    not HAS_CGROUP, reason="job cgroups are unavailable to this user on this host "
                           "(execgated doctor: cgroup), so there is nothing to set up or remove")

POLICY = """\
version: "2"
sandbox: {cgroup: required}
tools:
  small:
    type: command
    working_directory: ./workspace
    allowed_commands: [python3, sleep, "true"]
    sandbox: {limits: {memory: 64MiB, processes: 16}}
  large:
    type: command
    working_directory: ./workspace
    allowed_commands: [python3, "true"]
    sandbox: {limits: {memory: 256MiB, processes: 128}}
  bare:
    type: command
    working_directory: ./workspace
    allowed_commands: [sh]
    sandbox: {namespaces: "off", view: "off", limits: {memory: 64MiB, processes: 16}}
agents:
  dev: {tools: [small, large, bare]}
server:
  auth:
    enabled: true
    api_keys: [{name: tester, key: "${TEST_API_KEY}"}]
logger: {level: info, format: json}
"""

ALLOCATE = "import sys; b = b'x' * (int(sys.argv[1]) * 2**20); print(len(b) >> 20)"


def hierarchies() -> list[Path]:
    """The pids and memory cgroups this test process (and so every daemon it starts) is in."""
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in ("pids", "memory"):
            if controller in controllers.split(","):
                out.append(Path(f"/sys/fs/cgroup/{controller}{path.rstrip('/')}"))
    return out


def helper_of(d: Daemon) -> psutil.Process:
    """The daemon's sandbox helper: job cgroups live in ``execgate-<its pid>``."""
    helpers = [p for p in psutil.Process(d.proc.pid).children()
               if "execgate.daemon.sandbox._helper" in " ".join(p.cmdline())]
    assert len(helpers) == 1
    return helpers[0]


def parents(pid: int) -> list[Path]:
    """The ``execgate-<pid>`` directories that exist."""
    return [h / f"execgate-{pid}" for h in hierarchies() if (h / f"execgate-{pid}").exists()]


def dead_pid() -> int:
    """A pid that no process has now (one this test started and reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("cgroups"), POLICY)
    yield d
    d.stop()


def test_tools_with_different_limits_called_alternately_all_succeed(limited: Daemon) -> None:
    """A reused cgroup gets the next tool's limits whether they rise or fall (cgroup v1
    refuses a memory limit above the swap limit a smaller tool left)."""
    with limited.client() as c:
        for i in range(20):
            tool, size = ("large", 128) if i % 2 else ("small", 8)
            r = c.run(["python3", "-c", ALLOCATE, str(size)], agent="dev", tool=tool)
            assert (r.reason, r.stdout) == (ExitReason.EXITED, f"{size}\n".encode()), (i, r)


def test_the_smaller_limit_still_holds_after_the_larger_tool_ran(limited: Daemon) -> None:
    with limited.client() as c:
        assert c.run(["python3", "-c", ALLOCATE, "128"], agent="dev",
                     tool="large").reason is ExitReason.EXITED
        r = c.run(["python3", "-c", ALLOCATE, "128"], agent="dev", tool="small")
        assert r.reason is ExitReason.MEMORY_LIMIT


def test_a_stopped_daemon_leaves_no_cgroups_even_with_jobs_running(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, POLICY)
    helper = helper_of(d)
    try:
        with d.client() as c:
            for tool in ("small", "large"):
                assert c.run(["true"], agent="dev", tool=tool).exit_code == 0
            runs = []
            for seconds in ("1000", "1001", "1002"):
                runs.append(threading.Thread(target=c.run, args=(["sleep", seconds],),
                                             kwargs={"agent": "dev", "tool": "small"}))
                runs[-1].start()
                assert d.audit("run.started", argv=["sleep", seconds])
            assert parents(helper.pid)
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(timeout=30) == 0
            for run in runs:
                run.join(timeout=30)
    finally:
        d.stop()
    assert parents(helper.pid) == []


def test_a_stopped_daemon_leaves_no_cgroups_after_a_job_without_namespaces(
        tmp_path: Path) -> None:
    """Without a pid namespace nothing ends the job's processes with its init: the daemon
    ends whatever is left in its job cgroups before removing them."""
    d = start_daemon(tmp_path, POLICY)
    helper = helper_of(d)
    try:
        with d.client() as c:
            run = threading.Thread(target=c.run, args=(["sh", "-c", "sleep 1000 & wait"],),
                                   kwargs={"agent": "dev", "tool": "bare"})
            run.start()
            assert d.audit("run.started", tool="bare")
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(timeout=30) == 0
            run.join(timeout=30)
    finally:
        d.stop()
    assert parents(helper.pid) == []


def test_a_process_escaping_a_job_without_namespaces_ends_with_it(limited: Daemon) -> None:
    """setsid leaves the job's session, not its cgroup: once the job is over, what is left
    in its cgroup is ended, and the cgroup serves the next job."""
    with limited.client() as c:
        r = c.run(["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 & echo $!"], agent="dev",
                  tool="bare")
        # Ended with the job (its init is the subreaper), or by its cgroup soon after.
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(r.stdout)).wait(timeout=10)
        assert c.run(["sh", "-c", "true"], agent="dev", tool="bare").exit_code == 0


def test_a_stale_daemons_cgroups_are_removed_at_start(tmp_path: Path) -> None:
    stale = [h / f"execgate-{dead_pid()}" for h in hierarchies()]
    for parent in stale:
        (parent / "job-1").mkdir(parents=True)
    d = start_daemon(tmp_path, POLICY)
    try:
        assert [p for p in stale if p.exists()] == []
    finally:
        d.stop()
        for parent in stale:
            for path in (parent / "job-1", parent):
                if path.exists():
                    path.rmdir()


def test_cgroups_not_named_like_a_dead_daemons_are_untouched(tmp_path: Path) -> None:
    """Only ``execgate-<pid>`` of a pid with no live helper, and only its ``job-N``
    cgroups, are ours to remove."""
    gone = dead_pid()
    names = [f"execgate-{gone}x", f"other-{gone}", "execgate-", "execgate-0123",
             f"execgate-{gone}/not-a-job"]
    planted = [h / name for h in hierarchies() for name in names]
    for path in planted:
        path.mkdir(parents=True)
    try:
        d = start_daemon(tmp_path, POLICY)
        d.stop()
        assert [p for p in planted if not p.exists()] == []
    finally:
        for path in [*planted, *(h / f"execgate-{gone}" for h in hierarchies())]:
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()


def test_a_running_daemons_cgroups_are_untouched_by_another_start(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    first = start_daemon(tmp_path / "first", POLICY)
    try:
        helper = helper_of(first)
        with first.client() as c:
            assert c.run(["true"], agent="dev", tool="small").exit_code == 0
        mine = parents(helper.pid)
        assert mine
        (tmp_path / "second").mkdir()
        start_daemon(tmp_path / "second", POLICY).stop()
        assert [p for p in mine if not p.exists()] == []
        with first.client() as c:
            assert c.run(["true"], agent="dev", tool="small").exit_code == 0
    finally:
        first.stop()


def test_a_sigkilled_daemons_cgroups_are_removed_by_the_next_start(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the next daemon does it."""
    (tmp_path / "killed").mkdir()
    d = start_daemon(tmp_path / "killed", POLICY)
    helper = helper_of(d)
    with d.client() as c:
        assert c.run(["true"], agent="dev", tool="large").exit_code == 0
    d.proc.kill()
    d.stop()
    helper.wait(timeout=30)  # it dies with the daemon (parent death signal)
    left = parents(helper.pid)
    assert left
    (tmp_path / "next").mkdir()
    start_daemon(tmp_path / "next", POLICY).stop()
    assert [p for p in left if p.exists()] == []
