"""cgroup v2 job limits, driven against a directory laid out like a v2 hierarchy.

This host's pids and memory controllers are bound to cgroup v1, so the v2 controller files
exist only here: each test lays out what the kernel would show and checks what execgate
writes into it (tests/adversarial/test_cgroup_v2_host.py covers what the real unified
hierarchy allows).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from execgate.daemon.sandbox import _cgroup_v2
from execgate.daemon.sandbox._cgroups import JobCgroups, events

DAEMON, HELPER, OTHER = 4000, 4001, 4002
MiB = 2**20
KERNEL_FILES = {
    "cgroup.controllers": "cpuset cpu io memory pids\n", "cgroup.subtree_control": "\n",
    "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "",
    "pids.max": "max\n", "pids.events": "max 0\n", "memory.max": "max\n",
    "memory.swap.max": "max\n", "memory.oom.group": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"}


def cgroup(path: Path, files: dict[str, str] | None = None) -> Path:
    """A cgroup directory as the kernel shows it, with ``files`` in place of the defaults."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in {**KERNEL_FILES, **(files or {})}.items():
        (path / name).write_text(text)
    return path


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A directory made in the laid-out hierarchy shows the interface files at once, as a
    cgroup made in cgroupfs does."""
    real = os.mkdir

    def mkdir(path: str, mode: int = 0o777, *args: Any, **kwargs: Any) -> None:
        real(path, mode, *args, **kwargs)
        if Path(path).is_relative_to(tmp_path):
            cgroup(Path(path))

    monkeypatch.setattr(os, "mkdir", mkdir)


Writes = list[tuple[str, str]]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Writes:
    """Every write the v2 layer makes, in order, as (path under tmp_path, value)."""
    done: Writes = []
    real = _cgroup_v2.write

    def recorded(path: str, value: int | str) -> None:
        done.append((str(Path(path).relative_to(tmp_path)), str(value)))
        real(path, value)

    monkeypatch.setattr(_cgroup_v2, "write", recorded)
    return done


def delegated(tmp_path: Path, procs: list[int]) -> Path:
    """A service's delegated cgroup under a root that gives its children pids and memory."""
    cgroup(tmp_path, {"cgroup.subtree_control": "cpu io memory pids\n"})
    cgroup(tmp_path / "system.slice", {"cgroup.subtree_control": "cpu io memory pids\n"})
    return cgroup(tmp_path / "system.slice/execgated.service",
                  {"cgroup.procs": "".join(f"{pid}\n" for pid in procs)})


def probe(tmp_path: Path, own: Path) -> dict[str, object]:
    return _cgroup_v2.probe(str(tmp_path), str(own), daemon=DAEMON, helper=HELPER)


def test_a_delegated_cgroup_with_only_the_daemon_moves_it_into_a_leaf_first(
        tmp_path: Path, writes: Writes) -> None:
    """No internal processes: the daemon and helper leave the cgroup before it enables
    controllers for its children, and the job parent enables them for the jobs."""
    own = delegated(tmp_path, [DAEMON, HELPER])
    host = probe(tmp_path, own)
    service = "system.slice/execgated.service"
    assert host["version"] == 2
    assert host["parent"] == f"{own}/execgate-{HELPER}"
    assert writes == [(f"{service}/execgate-{HELPER}/daemon/cgroup.procs", str(DAEMON)),
                      (f"{service}/execgate-{HELPER}/daemon/cgroup.procs", str(HELPER)),
                      (f"{service}/cgroup.subtree_control", "+pids +memory"),
                      (f"{service}/execgate-{HELPER}/cgroup.subtree_control",
                       "+pids +memory")]


def test_a_cgroup_shared_with_other_processes_moves_nobody(
        tmp_path: Path, writes: Writes) -> None:
    """A login session or a test run is not the daemon's to rearrange: the job parent goes
    in the nearest ancestor that already gives its children both controllers."""
    own = delegated(tmp_path, [OTHER, DAEMON, HELPER])
    host = probe(tmp_path, own)
    assert host["parent"] == f"{tmp_path}/system.slice/execgate-{HELPER}"
    assert writes == [(f"system.slice/execgate-{HELPER}/cgroup.subtree_control",
                       "+pids +memory")]
    assert (own / "cgroup.subtree_control").read_text() == "\n"


def test_controllers_not_given_to_the_daemons_cgroup_are_named_in_the_reason(
        tmp_path: Path, writes: Writes) -> None:
    own = delegated(tmp_path, [DAEMON, HELPER])
    (own / "cgroup.controllers").write_text("cpu io\n")
    error = str(probe(tmp_path, own)["error"])
    assert "pids and memory" in error and "Delegate=yes" in error
    assert writes == []


def test_a_shared_cgroup_without_a_usable_ancestor_is_unavailable_with_the_reason(
        tmp_path: Path, writes: Writes) -> None:
    own = delegated(tmp_path, [OTHER, DAEMON, HELPER])
    for parent in (tmp_path, tmp_path / "system.slice"):
        (parent / "cgroup.subtree_control").write_text("cpu io\n")
    error = str(probe(tmp_path, own)["error"])
    assert "other processes than the daemon" in error
    assert writes == []


def test_a_failed_move_into_the_leaf_is_undone(tmp_path: Path, writes: Writes) -> None:
    """When the job parent cannot take the controllers, what was enabled is disabled
    again and the processes moved go back (then no ancestor is usable here either)."""
    own = delegated(tmp_path, [DAEMON, HELPER])
    (own / f"execgate-{HELPER}/cgroup.subtree_control").mkdir(parents=True)  # unwritable
    for parent in (tmp_path, tmp_path / "system.slice"):
        (parent / "cgroup.subtree_control").write_text("cpu io\n")
    host = probe(tmp_path, own)
    assert "moving the daemon into a leaf of it failed" in str(host["error"])
    service = "system.slice/execgated.service"
    assert writes[-3:] == [(f"{service}/execgate-{HELPER}/cgroup.subtree_control",
                            "-pids -memory"),
                           (f"{service}/cgroup.subtree_control", "-pids -memory"),
                           (f"{service}/cgroup.procs", str(HELPER))]


def test_a_job_cgroup_gets_every_limit_no_swap_and_whole_job_oom_kills(
        tmp_path: Path) -> None:
    job = cgroup(tmp_path / "job-1")
    _cgroup_v2.V2({"parent": str(tmp_path), "mount": str(tmp_path)}).configure(
        "job", str(job), {"pids_max": 16, "memory_max": 64 * MiB})
    assert [(job / name).read_text() for name in
            ("pids.max", "memory.max", "memory.swap.max", "memory.oom.group")] == [
        "16", str(64 * MiB), "0", "1"]


def test_a_reused_job_cgroup_drops_the_limits_the_next_job_does_not_have(
        tmp_path: Path) -> None:
    job = cgroup(tmp_path / "job-1", {"pids.max": "16\n", "memory.max": "1024\n",
                                      "memory.swap.max": "0\n"})
    _cgroup_v2.V2({"parent": str(tmp_path), "mount": str(tmp_path)}).configure(
        "job", str(job), {"pids_max": 8, "memory_max": None})
    assert [(job / name).read_text() for name in
            ("pids.max", "memory.max", "memory.swap.max")] == ["8", "max", "max"]


def test_without_swap_accounting_no_swap_limit_is_written(tmp_path: Path) -> None:
    job = cgroup(tmp_path / "job-1")
    (job / "memory.swap.max").unlink()
    _cgroup_v2.V2({"parent": str(tmp_path), "mount": str(tmp_path)}).configure(
        "job", str(job), {"pids_max": 8, "memory_max": MiB})
    assert not (job / "memory.swap.max").exists()


@pytest.fixture
def pooled(tmp_path: Path, kernel: None) -> JobCgroups:
    """JobCgroups over a v2 job parent in the laid-out hierarchy."""
    cgroup(tmp_path / "execgate-1")
    return JobCgroups({"version": 2, "parent": f"{tmp_path}/execgate-1",
                       "mount": str(tmp_path), "why": "test"})


def test_a_job_joins_one_cgroup_with_both_limits(tmp_path: Path, pooled: JobCgroups) -> None:
    procs = pooled.create(7, {"pids_max": 16, "memory_max": 64 * MiB})
    job = tmp_path / "execgate-1/job-1"
    assert procs == [f"{job}/cgroup.procs"]
    assert [(job / name).read_text() for name in ("pids.max", "memory.max")] == [
        "16", str(64 * MiB)]


def test_events_are_what_this_job_added_to_a_reused_cgroups_counters(
        tmp_path: Path, pooled: JobCgroups) -> None:
    """memory.events and pids.events only grow: a reused cgroup's earlier jobs' OOM kills
    and refused forks are not this job's."""
    job = tmp_path / "execgate-1/job-1"
    pooled.create(1, {"pids_max": 16, "memory_max": MiB})
    (job / "memory.events").write_text("oom 2\noom_kill 2\n")
    (job / "pids.events").write_text("max 5\n")
    pooled.remove(1)
    assert pooled.create(2, {"pids_max": 16, "memory_max": MiB}) == [f"{job}/cgroup.procs"]
    (job / "memory.events").write_text("oom 3\noom_kill 3\n")
    (job / "pids.events").write_text("max 9\n")
    assert events(pooled.counters(2)) == {"oom_kills": 1, "pids_max_hits": 4}


def test_what_is_left_in_a_finished_jobs_cgroup_is_killed_with_cgroup_kill(
        tmp_path: Path, pooled: JobCgroups) -> None:
    """The cgroup serves the next job only once it is no longer populated."""
    job = tmp_path / "execgate-1/job-1"
    pooled.create(1, {"pids_max": 16, "memory_max": MiB})
    (job / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    pooled.remove(1)
    assert (job / "cgroup.kill").read_text() == "1"
    assert pooled.pending == [("job", str(job))]
    (job / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    pooled.retry()
    assert pooled.pending == []
    assert pooled.create(2, {"pids_max": 1, "memory_max": None}) == [f"{job}/cgroup.procs"]


def test_a_reused_cgroup_that_refuses_its_limits_is_not_pooled_again(
        tmp_path: Path, pooled: JobCgroups) -> None:
    job = tmp_path / "execgate-1/job-1"
    pooled.create(1, {"pids_max": 16, "memory_max": MiB})
    pooled.remove(1)
    (job / "pids.max").unlink()
    (job / "pids.max").mkdir()  # the kernel will not take a limit there any more
    assert pooled.create(2, {"pids_max": 16, "memory_max": MiB}) == [
        f"{tmp_path}/execgate-1/job-2/cgroup.procs"]
    pooled.remove(2)
    assert pooled.create(3, {"pids_max": 16, "memory_max": MiB}) == [
        f"{tmp_path}/execgate-1/job-2/cgroup.procs"]


def test_no_job_cgroups_on_a_host_without_them(tmp_path: Path) -> None:
    """A job with limits cannot start where the layer is unavailable (fail closed)."""
    with pytest.raises(OSError, match="unavailable"):
        JobCgroups({"error": "none here"}).create(1, {"pids_max": 1, "memory_max": None})


def test_the_daemons_cgroup_is_found_in_a_unified_only_host() -> None:
    mountinfo = ("30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n"
                 "31 24 0:27 / /proc rw shared:5 - proc proc rw\n")
    assert _cgroup_v2.own_cgroup("0::/system.slice/execgated.service\n", mountinfo) == (
        "/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/execgated.service")


def test_the_unified_hierarchy_of_a_hybrid_host_is_found_beside_v1() -> None:
    mountinfo = ("30 24 0:26 / /sys/fs/cgroup rw shared:4 - tmpfs tmpfs rw\n"
                 "35 30 0:31 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n"
                 "36 30 0:32 / /sys/fs/cgroup/pids rw shared:10 - cgroup cgroup rw,pids\n")
    assert _cgroup_v2.own_cgroup("8:pids:/\n0::/\n", mountinfo) == (
        "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified")


def test_a_mounted_subtree_is_followed_from_its_root() -> None:
    """A container without a cgroup namespace sees its own subtree mounted, and the full
    path in /proc/self/cgroup."""
    mountinfo = "40 30 0:26 /docker/abc /sys/fs/cgroup ro shared:4 - cgroup2 cgroup2 rw\n"
    assert _cgroup_v2.own_cgroup("0::/docker/abc/app\n", mountinfo) == (
        "/sys/fs/cgroup", "/sys/fs/cgroup/app")


def test_no_unified_hierarchy_is_none() -> None:
    assert _cgroup_v2.own_cgroup("0::/\n", "31 24 0:27 / /proc rw - proc proc rw\n") is None
