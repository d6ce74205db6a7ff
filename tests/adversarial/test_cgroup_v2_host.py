"""What this host's real cgroup2 hierarchy allows the v2 job cgroup layer to do.

On a hybrid host the unified hierarchy has no pids or memory controller (they are bound to
v1), so limits cannot be set in it; what it does have is exercised for real: making job
cgroups beneath the process's own, joining one through ``cgroup.procs`` as a job's init
does, ending a whole tree with ``cgroup.kill``, ``cgroup.events`` going unpopulated after,
and the daemon's move into a leaf and back. Every cgroup made here is removed.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from execgate.daemon.sandbox import _cgroup_v1, _cgroup_v2
from tests.conftest import DOCTOR


def _unified() -> tuple[str, str] | None:
    return _cgroup_v2.own_cgroup(Path("/proc/self/cgroup").read_text(),
                                 Path("/proc/self/mountinfo").read_text())


UNIFIED = _unified()


def layer(cgroup: Path) -> _cgroup_v2.V2:
    """The v2 layer's view of ``cgroup`` as a job cgroup in its parent."""
    assert UNIFIED is not None
    return _cgroup_v2.V2({"parent": str(cgroup.parent), "mount": UNIFIED[0]})


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A cgroup of the test's own beneath this process's unified cgroup, removed after."""
    if UNIFIED is None:
        pytest.skip("no cgroup2 hierarchy is mounted for this process")
    path = Path(UNIFIED[1]) / f"execgate-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"this user may not create cgroups under {UNIFIED[1]}: {exc.strerror}")
    try:
        yield path
    finally:
        for child in sorted(path.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                layer(child).kill("job", str(child))
                wait_unpopulated(child)
            child.rmdir()
    assert not path.exists()


def wait_unpopulated(cgroup: Path, timeout: float = 10.0) -> None:
    """Until ``cgroup.events`` says ``populated 0``: the kernel wakes a poll on the file
    when it changes, so this waits for the event itself."""
    with open(cgroup / "cgroup.events") as events:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        while True:
            events.seek(0)
            if "populated 0" in events.read().splitlines():
                return
            assert poller.poll(timeout * 1000), f"{cgroup} still populated"


def cgroup_of(pid: int) -> str:
    """The process's cgroup in the unified hierarchy, as a directory."""
    assert UNIFIED is not None
    line = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if line.startswith("0::"))
    return f"{UNIFIED[0]}{line[3:]}".rstrip("/")


def join_and_run(cgroup: Path, script: str) -> tuple[subprocess.Popen[str], list[int]]:
    """Start ``sh`` that joins ``cgroup`` as a job's init does (it writes "0" into
    cgroup.procs) and runs ``script``; returns once the script printed its pids."""
    proc = subprocess.Popen(["sh", "-c", f'echo 0 > "$1/cgroup.procs" && {{ {script}; }}', "sh",
                             str(cgroup)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with proc.stdout:
        return proc, [int(pid) for pid in proc.stdout.readline().split()]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_process_joins_a_job_cgroup_made_beneath_its_own(scratch: Path) -> None:
    job = scratch / "execgate-1/job-1"
    job.mkdir(parents=True)
    proc, [pid] = join_and_run(job, "sleep 1000 & echo $!; wait")
    try:
        assert cgroup_of(pid) == str(job)
        assert not layer(job).empty(str(job))
    finally:
        proc.kill()
        psutil.Process(pid).kill()
        proc.wait()


def test_cgroup_kill_ends_the_whole_tree_setsid_and_double_forks_included(
        scratch: Path) -> None:
    """One write ends everything in the job's cgroup, wherever in the process tree it
    went; the cgroup is then unpopulated and can be removed."""
    job = scratch / "execgate-1/job-1"
    job.mkdir(parents=True)
    proc, pids = join_and_run(job, "setsid sleep 1000 >/dev/null 2>&1 & a=$!; "
                                   "b=$(sh -c 'sleep 1001 >/dev/null 2>&1 & echo $!'); "
                                   "echo $a $b $$; exec sleep 1002")
    assert len(pids) == 3 and all(cgroup_of(pid) == str(job) for pid in pids)
    layer(job).kill("job", str(job))
    assert proc.wait(timeout=10) == -9
    wait_unpopulated(job)
    assert all(gone(pid) for pid in pids)
    assert layer(job).empty(str(job))
    job.rmdir()


def test_the_daemon_and_helper_move_into_a_leaf_and_back_when_they_are_alone(
        scratch: Path) -> None:
    """The set-up on a delegated cgroup: its only processes (the daemon, and the helper,
    its child) go into ``execgate-<helper>/daemon``; at close they are moved back and every
    cgroup made is gone. (No controllers are enabled: this hierarchy has none to give.)"""
    assert UNIFIED is not None
    proc, [helper] = join_and_run(scratch, "sleep 1000 & echo $!; wait")
    daemon = proc.pid
    try:
        host = _cgroup_v2.probe(UNIFIED[0], str(scratch), daemon, helper, controllers=())
        leaf = scratch / f"execgate-{helper}/daemon"
        assert host["leaf"] == str(leaf)
        assert (cgroup_of(daemon), cgroup_of(helper)) == (str(leaf), str(leaf))
        assert (scratch / "cgroup.procs").read_text() == ""
        _cgroup_v2.V2(host).close()
        assert (cgroup_of(daemon), cgroup_of(helper)) == (str(scratch), str(scratch))
        assert not leaf.parent.exists()
    finally:
        psutil.Process(helper).kill()
        proc.wait()


def test_a_cgroup_shared_with_others_is_not_rearranged(scratch: Path) -> None:
    """With a process beside the daemon and helper, nobody is moved."""
    assert UNIFIED is not None
    proc, [helper, other] = join_and_run(
        scratch, "sleep 1000 & a=$!; sleep 1001 & echo $a $!; wait")
    try:
        host = _cgroup_v2.probe(UNIFIED[0], str(scratch), proc.pid, helper, controllers=())
        assert "leaf" not in host
        assert {cgroup_of(pid) for pid in (proc.pid, helper, other)} == {str(scratch)}
        _cgroup_v2.V2(host).close()
        assert not Path(host["parent"]).exists()
    finally:
        for pid in (helper, other):
            psutil.Process(pid).kill()
        proc.wait()


def test_the_probe_names_the_controllers_this_unified_hierarchy_lacks() -> None:
    if UNIFIED is None:
        pytest.skip("no cgroup2 hierarchy is mounted for this process")
    offered = Path(UNIFIED[1], "cgroup.controllers").read_text().split()
    missing = [c for c in ("pids", "memory") if c not in offered]
    if not missing:
        pytest.skip("this host's unified hierarchy gives this process pids and memory")
    host = _cgroup_v2.probe(*UNIFIED, daemon=os.getppid(), helper=os.getpid())
    assert f"not given the {' and '.join(missing)} controller" in host["error"]


def test_doctor_says_which_cgroup_version_it_uses_and_why() -> None:
    line = next(line for line in DOCTOR.splitlines() if "cgroup (pids, memory)" in line)
    v1 = _cgroup_v1.own_paths(Path("/proc/self/cgroup").read_text())
    version = "v1" if set(v1) == {"pids", "memory"} else "v2"
    if line.lstrip().startswith("ok"):
        assert f"with cgroup {version}: " in line
    else:  # unavailable (an unprivileged user here): the reason names the version tried
        assert f"cgroup {version}" in line.split(": ", 1)[1]
