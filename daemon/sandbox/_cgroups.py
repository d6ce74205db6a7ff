"""Per-job cgroups: the bound on processes and memory that rlimits cannot give.

RLIMIT_NPROC counts every process of a uid (and root ignores it), RLIMIT_AS breaks Go and
the JVM: a cgroup per job bounds exactly the job. Jobs' cgroups are made beneath the
helper's own cgroup, so a delegated subtree (systemd's Delegate=) is enough. Which cgroup
version: v1 when its pids and memory controllers are mounted for this process (a hybrid
host such as this one), else v2 (``_cgroup_v2``), else the layer is reported unavailable,
with the reason. Both versions sit behind one interface (``_cgroup_files.Hierarchy``);
what is pooled, counted and cleaned up is the same for both.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from execgate.daemon.sandbox import _cgroup_v1, _cgroup_v2
from execgate.daemon.sandbox._cgroup_files import (
    Events,
    Hierarchy,
    Limits,
    field,
    remove_members,
)
from execgate.daemon.sandbox._protocol import Counter


def probe() -> dict[str, Any]:
    """Where this helper can make job cgroups, with which version and why, or
    {"error": reason}.

    Beside its own, it removes the parents that daemons no longer running left behind.
    """
    try:
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    except OSError as exc:
        return {"error": f"cannot read /proc/self/cgroup or mountinfo: {exc.strerror}"}
    v1 = _cgroup_v1.own_paths(proc_cgroup)
    if set(v1) == set(_cgroup_v1.CONTROLLERS):
        return _cgroup_v1.probe(v1)
    unified = _cgroup_v2.own_cgroup(proc_cgroup, mountinfo)
    if unified is None:
        return {"error": "neither cgroup v1 pids and memory controllers nor a cgroup v2 "
                         "hierarchy are mounted for this process"}
    return _cgroup_v2.probe(*unified, daemon=os.getppid(), helper=os.getpid())


def _hierarchy(host: dict[str, Any]) -> Hierarchy | None:
    version = host.get("version")
    return (_cgroup_v1.V1(host) if version == 1 else _cgroup_v2.V2(host) if version == 2
            else None)


class JobCgroups:
    """Gives each job its own cgroups, and reads what the job ran into.

    A cgroup is reused once its last process is gone: making and removing v1 memory cgroups
    costs about a millisecond a job here, and v2 would pile up dying memory cgroups. Its
    event counters only grow, so a job's events are the difference from when it was
    handed out.
    """

    def __init__(self, host: dict[str, Any]) -> None:
        self._hierarchy = _hierarchy(host)
        self._parents = self._hierarchy.parents if self._hierarchy else {}
        self._made = 0
        self._free: dict[str, list[str]] = {kind: [] for kind in self._parents}
        self._jobs: dict[int, list[tuple[str, str, list[Counter]]]] = {}
        self.pending: list[tuple[str, str]] = []
        """(kind, directory) whose processes were still exiting; checked again."""

    def create(self, job: int, limits: Limits | None) -> list[str]:
        """Give the job cgroups with its limits; returns the cgroup.procs files to join."""
        if not limits:
            return []
        if self._hierarchy is None:
            raise OSError("job cgroups are unavailable on this host")
        held = self._jobs.setdefault(job, [])
        for kind in self._hierarchy.kinds(limits):
            held.append(self._limited(self._hierarchy, kind, limits))
        return [f"{path}/cgroup.procs" for _, path, _ in held]

    def _limited(self, hierarchy: Hierarchy, kind: str,
                 limits: Limits) -> tuple[str, str, list[Counter]]:
        """A cgroup with its limits set, and its event counters with their values now.

        A reused cgroup the kernel will not take the limits in is removed, never pooled
        again (it would fail every later job the same way); a new one that fails raises.
        """
        while True:
            path, new = self._take(kind)
            try:
                hierarchy.configure(kind, path, limits)
                return kind, path, [
                    Counter(name=name, path=file, key=key, base=field(file, key))
                    for name, file, key in hierarchy.counters(kind, path)]
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                if new:
                    raise

    def _take(self, kind: str) -> tuple[str, bool]:
        """A pooled cgroup, or a new one: (path, whether new)."""
        if self._free[kind]:
            return self._free[kind].pop(), False
        while True:
            self._made += 1
            path = f"{self._parents[kind]}/job-{self._made}"
            with contextlib.suppress(FileExistsError):  # a leftover that still has a process
                os.mkdir(path)
                return path, True

    def counters(self, job: int) -> list[Counter]:
        """The job's event counters and their values when it got its cgroups: whoever
        sees the job end reads them again (``events``)."""
        return [c for _, _, counters in self._jobs.get(job, []) for c in counters]

    def remove(self, job: int) -> None:
        """Hand the job's cgroups back once its processes are gone."""
        self.pending.extend((kind, path) for kind, path, _ in self._jobs.pop(job, []))
        self.retry()

    def retry(self) -> None:
        """Recycle the cgroups whose processes have all exited; end those left in the others."""
        if self._hierarchy is None:
            return
        still = []
        for kind, path in self.pending:
            try:
                empty = self._hierarchy.empty(path)
            except (OSError, ValueError):  # not a usable cgroup any more: not one to reuse
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                continue
            if empty:
                self._free[kind].append(path)
            else:
                # The job is over: what is still here escaped its end (a job without a pid
                # namespace leaves its setsid and double-forked processes behind).
                self._hierarchy.kill(kind, path)
                still.append((kind, path))
        self.pending = still

    def close(self, grace: float = 2.0) -> None:
        """End what is left of the jobs, then remove every job cgroup and the parents.

        A job in a pid namespace died with its init; one without leaves its processes in
        its cgroups, and a cgroup can only be removed once the last of them has exited:
        they are killed, and waited for at most ``grace`` seconds.
        """
        deadline = time.monotonic() + grace
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
            self.retry()
        for parent in self._parents.values():
            remove_members(parent)
        if self._hierarchy is not None:
            self._hierarchy.close()


def events(counters: list[Counter]) -> Events:
    """How often a job hit its limits since ``counters`` were taken: OOM kills and refused
    forks (plain file reads: the daemon calls it). The counters are taken anew, for the
    init's next job."""
    out = {"oom_kills": 0, "pids_max_hits": 0}
    for counter in counters:
        with contextlib.suppress(OSError, ValueError):
            value = field(counter["path"], counter["key"])
            out[counter["name"]] += value - counter["base"]
            counter["base"] = value
    return out
