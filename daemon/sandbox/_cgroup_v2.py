"""cgroup v2 job limits: one cgroup per job in the unified hierarchy, with both controllers.

cgroup v2 lets a cgroup either hold processes or give controllers to child cgroups, not
both ("no internal processes"). In a cgroup of its own (systemd's ``Delegate=yes``, where
the cgroup holds just the daemon and its helper) the helper moves the two into a leaf,
``execgate-<pid>/daemon``, so that the daemon's cgroup can enable ``pids`` and ``memory``
for ``execgate-<pid>`` and it for the jobs in it; it moves them back when it stops. In a
cgroup shared with other processes (a login session, a test run) it moves nobody, and
makes ``execgate-<pid>`` in the nearest ancestor that already gives both controllers to
its children and that it may write (as root; an unprivileged user only in a subtree
delegated to it).

A job's cgroup is reused, as on v1: removing a memory cgroup that was charged page cache
leaves a dying one in the kernel until its pages are reclaimed, so a fresh cgroup per job
would pile them up under load.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from execgate.daemon.sandbox._cgroup_files import (
    Limits,
    kill_members,
    pids,
    remove_stale,
    words,
    write,
)

CONTROLLERS = ("pids", "memory")
JOB = "job"
"""The one kind of job cgroup: it has every controller."""


def own_cgroup(proc_cgroup: str, mountinfo: str) -> tuple[str, str] | None:
    """(mount point of the unified hierarchy, the helper's own cgroup directory in it),
    from the texts of ``/proc/self/cgroup`` and ``/proc/self/mountinfo``; None when no
    cgroup2 is mounted or the process has no place in it."""
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")),
                None)
    mounts = {}
    for line in mountinfo.splitlines():
        fields, _, fs = line.partition(" - ")
        if fs.split(" ", 1)[0] == "cgroup2":
            parts = fields.split(" ")
            mounts[parts[4]] = parts[3]  # mount point: the cgroup it shows as its root
    if path is None or not mounts:
        return None
    mount = "/sys/fs/cgroup" if "/sys/fs/cgroup" in mounts else min(mounts)
    root = mounts[mount].rstrip("/")
    if root and (path == root or path.startswith(f"{root}/")):
        path = path[len(root):]  # a mount of a subtree (a container without a cgroup ns)
    return mount, f"{mount}{path.rstrip('/')}"


def probe(mount: str, own: str, daemon: int, helper: int,
          controllers: tuple[str, ...] = CONTROLLERS) -> dict[str, Any]:
    """Set up ``execgate-<helper>`` for job cgroups with ``controllers``: the host entry
    ``JobCgroups`` takes, or {"error": reason}. ``daemon`` is the helper's parent."""
    try:
        offered = words(f"{own}/cgroup.controllers")
    except OSError as exc:
        return {"error": f"cgroup v2: cannot read {own}/cgroup.controllers: {exc.strerror}"}
    missing = [c for c in controllers if c not in offered]
    if missing:
        return {"error": f"cgroup v2: {own} is not given the {' and '.join(missing)} "
                         "controller by its parent (on a systemd host, Delegate=yes gives a "
                         "service both; a cgroup v1 hierarchy may hold them instead)"}
    refused = ("it is the hierarchy's root" if own == mount else
               "it holds other processes than the daemon and its helper")
    if own != mount and _holds_only(own, {daemon, helper}):
        try:
            return _vacate(mount, own, (daemon, helper), controllers)
        except OSError as exc:
            refused = f"moving the daemon into a leaf of it failed: {exc.strerror}"
    base = _enabling_ancestor(mount, own, controllers)
    if base is None:
        return {"error": f"cgroup v2: cannot give job cgroups controllers under {own} "
                         f"({refused}), and no ancestor that gives {' and '.join(controllers)} "
                         "to its children may be written (run the daemon in a cgroup of its "
                         "own: systemd's Delegate=yes)"}
    parent = f"{base}/execgate-{helper}"
    try:
        remove_stale(base)
        os.makedirs(parent, exist_ok=True)
        _enable(parent, controllers)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.rmdir(parent)
        return {"error": f"cgroup v2: cannot create job cgroups under {base}: "
                         f"{exc.strerror} (run as root, or delegate the subtree)"}
    return {"version": 2, "parent": parent, "mount": mount,
            "why": f"{base} gives {' and '.join(controllers)} to the cgroups this "
                   f"process makes in it (none moved: as for {own}, {refused})"}


def _holds_only(cgroup: str, ours: set[int]) -> bool:
    try:
        return set(pids(f"{cgroup}/cgroup.procs")) <= ours
    except (OSError, ValueError):
        return False


def _vacate(mount: str, own: str, ours: tuple[int, ...],
            controllers: tuple[str, ...]) -> dict[str, Any]:
    """Move ``ours`` into ``execgate-<helper>/daemon`` and give the controllers to the job
    parent; undone when any step fails."""
    remove_stale(own)
    parent = f"{own}/execgate-{ours[-1]}"
    leaf = f"{parent}/daemon"
    before = words(f"{own}/cgroup.subtree_control")
    enabled = [c for c in controllers if c not in before]
    try:
        os.makedirs(leaf, exist_ok=True)
        for pid in ours:
            write(f"{leaf}/cgroup.procs", pid)
        _enable(own, enabled)
        _enable(parent, controllers)
    except OSError:
        restore({"own": own, "parent": parent, "leaf": leaf, "enabled": enabled,
                 "controllers": list(controllers)})
        raise
    return {"version": 2, "parent": parent, "mount": mount, "own": own, "leaf": leaf,
            "enabled": enabled, "controllers": list(controllers),
            "why": f"the daemon's own cgroup {own} (delegated) is given "
                   f"{' and '.join(controllers)}; the daemon and its helper moved into "
                   f"{leaf}"}


def _enabling_ancestor(mount: str, own: str, controllers: tuple[str, ...]) -> str | None:
    """The nearest of ``own`` and its ancestors whose children get ``controllers`` and in
    which this process may make cgroups and move its jobs (its ``cgroup.procs``: the common
    ancestor of where a job's init is and where it goes)."""
    cgroup = own
    while True:
        with contextlib.suppress(OSError):
            if (set(controllers) <= set(words(f"{cgroup}/cgroup.subtree_control"))
                    and os.access(cgroup, os.W_OK | os.X_OK)
                    and os.access(f"{cgroup}/cgroup.procs", os.W_OK)):
                return cgroup
        if cgroup == mount or not cgroup.startswith(f"{mount}/"):
            return None
        cgroup = os.path.dirname(cgroup)


def _enable(cgroup: str, controllers: tuple[str, ...] | list[str]) -> None:
    if controllers:
        write(f"{cgroup}/cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))


def restore(host: dict[str, Any]) -> None:
    """Undo ``_vacate`` as far as it went: disable what it enabled (children first, as the
    kernel requires), move the processes in the leaf back, remove the leaf and parent."""
    with contextlib.suppress(OSError):
        write(f"{host['parent']}/cgroup.subtree_control",
              " ".join(f"-{c}" for c in host["controllers"]))
    with contextlib.suppress(OSError):
        if host["enabled"]:
            write(f"{host['own']}/cgroup.subtree_control",
                  " ".join(f"-{c}" for c in host["enabled"]))
    with contextlib.suppress(OSError, ValueError):
        for pid in pids(f"{host['leaf']}/cgroup.procs"):
            with contextlib.suppress(OSError):  # gone meanwhile
                write(f"{host['own']}/cgroup.procs", pid)
    for directory in (host["leaf"], host["parent"]):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


class V2:
    """A job's cgroup is one, with every controller."""

    def __init__(self, host: dict[str, Any]) -> None:
        self.parents = {JOB: str(host["parent"])}
        self._host = host

    def kinds(self, limits: Limits) -> list[str]:
        """One cgroup, whichever limits the job has."""
        return [JOB]

    def configure(self, kind: str, path: str, limits: Limits) -> None:
        """Every limit, "max" where the job has none (a reused cgroup keeps the last).

        Swap is not the job's to use when its memory is limited (``memory.swap.max`` 0, as
        v1's memsw limit equal to the memory limit), and an OOM kill takes the whole job
        (``memory.oom.group``), not one process the rest would run on without.
        """
        memory = limits.get("memory_max")
        write(f"{path}/pids.max", _or_max(limits.get("pids_max")))
        write(f"{path}/memory.max", _or_max(memory))
        if os.path.exists(f"{path}/memory.swap.max"):  # absent without swap accounting
            write(f"{path}/memory.swap.max", "max" if memory is None else 0)
        write(f"{path}/memory.oom.group", 1)

    def counters(self, kind: str, path: str) -> list[tuple[str, str, str]]:
        """OOM kills (``memory.events``) and refused forks (``pids.events``)."""
        return [("oom_kills", f"{path}/memory.events", "oom_kill"),
                ("pids_max_hits", f"{path}/pids.events", "max")]

    def empty(self, path: str) -> bool:
        """Whether ``cgroup.events`` says the cgroup is no longer populated."""
        with open(f"{path}/cgroup.events") as f:
            for line in f:
                if line.startswith("populated "):
                    return int(line.split()[1]) == 0
        raise OSError(f"{path}/cgroup.events has no populated line")

    def kill(self, kind: str, path: str) -> None:
        """One write to ``cgroup.kill`` (Linux 5.14+) kills the whole tree, whatever forks
        meanwhile; before it, each process pinned by pidfd."""
        if os.path.exists(f"{path}/cgroup.kill"):
            write(f"{path}/cgroup.kill", 1)
            return
        member = f"0::{path.removeprefix(self._host['mount'])}"
        kill_members(f"{path}/cgroup.procs", lambda lines: member in lines)

    def close(self) -> None:
        """Remove the parent; after a move into the leaf, move back first."""
        if "leaf" in self._host:
            restore(self._host)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(self._host["parent"])


def _or_max(value: int | None) -> int | str:
    return "max" if value is None else value
