"""cgroup v1 job limits: a ``pids`` and a ``memory`` cgroup per job, each in its own
hierarchy, made beneath the helper's own cgroup in each (a delegated subtree is enough)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from execgate.daemon.sandbox._cgroup_files import (
    Limits,
    kill_members,
    pids,
    remove_stale,
    write,
)

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("pids", "memory")
_LIMIT = {"pids": ("pids_max", "pids.max"), "memory": ("memory_max", "memory.limit_in_bytes")}
_EVENT = {"pids": ("pids_max_hits", "pids.events", "max"),
          "memory": ("oom_kills", "memory.oom_control", "oom_kill")}
WHY = "the v1 pids and memory controllers are mounted for this process"


def own_paths(proc_cgroup: str) -> dict[str, str]:
    """The helper's own cgroup directory in each v1 hierarchy of ``CONTROLLERS`` it is in,
    from the text of ``/proc/self/cgroup``."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in CONTROLLERS:
                paths[controller] = f"{ROOT}/{controller}{path.rstrip('/')}"
    return paths


def probe(own: dict[str, str]) -> dict[str, Any]:
    """Make ``execgate-<pid>`` beside the helper in each hierarchy (removing what killed
    daemons left there): the host entry ``JobCgroups`` takes, or {"error": reason}."""
    parents = {}
    for controller, path in own.items():
        parent = f"{path}/execgate-{os.getpid()}"
        try:
            remove_stale(path)
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            return {"error": f"cgroup v1 ({WHY}): cannot create a {controller} cgroup under "
                             f"{path}: {exc.strerror} (run as root, or delegate the subtree)"}
        parents[controller] = parent
    return {"version": 1, "why": WHY, "parents": parents}


class V1:
    """A job's cgroups are one per controller it is limited by."""

    def __init__(self, host: dict[str, Any]) -> None:
        self.parents: dict[str, str] = host["parents"]

    def kinds(self, limits: Limits) -> list[str]:
        """A cgroup per controller the job has a limit for."""
        return [c for c in CONTROLLERS if limits.get(_LIMIT[c][0]) is not None]

    def configure(self, kind: str, path: str, limits: Limits) -> None:
        """Set a reused or new cgroup's limit.

        cgroup v1 keeps memory+swap >= memory at every write, so a cgroup a smaller tool
        left takes a larger limit only swap first, and a smaller one only memory first.
        """
        key, name = _LIMIT[kind]
        value = limits[key]
        limit = f"{path}/{name}"
        swap = f"{path}/memory.memsw.limit_in_bytes"
        if kind != "memory" or not os.path.exists(swap):
            write(limit, value)
            return
        with open(limit) as f:
            raising = value >= int(f.read())
        for name in (swap, limit) if raising else (limit, swap):
            write(name, value)  # the swap limit too: no escape into swap

    def counters(self, kind: str, path: str) -> list[tuple[str, str, str]]:
        """The kind's one counter: refused forks, or OOM kills."""
        event, name, key = _EVENT[kind]
        return [(event, f"{path}/{name}", key)]

    def empty(self, path: str) -> bool:
        """Whether ``cgroup.procs`` lists nobody."""
        return not pids(f"{path}/cgroup.procs")

    def kill(self, kind: str, path: str) -> None:
        """v1 has no ``cgroup.kill``: each process, pinned by pidfd."""
        member = f":{path.removeprefix(f'{ROOT}/{kind}')}"
        kill_members(f"{path}/cgroup.procs", lambda lines: any(
            line.endswith(member) and kind in line.split(":")[1].split(",")
            for line in lines))

    def close(self) -> None:
        """Remove the (by now empty) parents."""
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)
