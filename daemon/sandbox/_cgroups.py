"""Per-job cgroups: the bound on processes and memory that rlimits cannot give.

RLIMIT_NPROC counts every process of a uid (and root ignores it), RLIMIT_AS breaks Go and
the JVM: a cgroup per job bounds exactly the job. Jobs' cgroups are made beneath the
helper's own cgroup, so a delegated subtree (systemd's Delegate=) is enough. This host kind
has cgroup v1 pids and memory controllers; on a host without a writable hierarchy the layer
is reported unavailable, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

_ROOT = "/sys/fs/cgroup"
_LIMIT_FILES = {"pids": "pids.max", "memory": "memory.limit_in_bytes"}


def _own_paths() -> dict[str, str]:
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller in _LIMIT_FILES:
                    paths[controller] = f"{_ROOT}/{controller}{path.rstrip('/')}"
    return paths


def probe() -> dict[str, Any]:
    """Where this helper can make job cgroups: {"parents": {...}} or {"error": reason}."""
    try:
        own = _own_paths()
    except OSError as exc:
        return {"error": f"cannot read /proc/self/cgroup: {exc}"}
    missing = sorted(set(_LIMIT_FILES) - set(own))
    if missing:
        return {"error": f"no cgroup v1 {' and '.join(missing)} controller mounted "
                         "(cgroup v2 job limits are not supported yet)"}
    parents = {}
    for controller, path in own.items():
        parent = f"{path}/execgate-{os.getpid()}"
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            return {"error": f"cannot create a {controller} cgroup under {path}: "
                             f"{exc.strerror} (run as root, or delegate the subtree)"}
        parents[controller] = parent
    return {"parents": parents}


_EVENTS = {"pids": ("pids.events", "max"), "memory": ("memory.oom_control", "oom_kill")}


class JobCgroups:
    """Gives each job its own cgroups, and reads what the job ran into.

    A cgroup is reused once its last process is gone: making and removing v1 memory cgroups
    costs about a millisecond a job here. Its event counters only grow, so a job's events
    are the difference from when it was handed out.
    """

    def __init__(self, host: dict[str, Any]) -> None:
        self._parents: dict[str, str] = host.get("parents", {})
        self._made = 0
        self._free: dict[str, list[str]] = {c: [] for c in _LIMIT_FILES}
        self._jobs: dict[int, list[tuple[str, str, int]]] = {}
        self.pending: list[tuple[str, str]] = []
        """(controller, directory) whose processes were still exiting; checked again."""

    def create(self, job: int, limits: dict[str, int] | None) -> list[str]:
        """Give the job cgroups with its limits; returns the cgroup.procs files to join."""
        if not limits:
            return []
        held = self._jobs.setdefault(job, [])
        for controller, key in (("pids", "pids_max"), ("memory", "memory_max")):
            if limits.get(key) is None:
                continue
            path = self._take(controller)
            held.append((controller, path, _count(controller, path)))
            _write(f"{path}/{_LIMIT_FILES[controller]}", limits[key])
            if controller == "memory" and os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):
                _write(f"{path}/memory.memsw.limit_in_bytes", limits[key])  # no swap escape
        return [f"{path}/cgroup.procs" for _, path, _ in held]

    def _take(self, controller: str) -> str:
        if self._free[controller]:
            return self._free[controller].pop()
        self._made += 1
        path = f"{self._parents[controller]}/job-{self._made}"
        os.mkdir(path)
        return path

    def events(self, job: int) -> dict[str, int]:
        """How often the job hit its limits: OOM kills and refused forks."""
        out = {"oom_kills": 0, "pids_max_hits": 0}
        for controller, path, before in self._jobs.get(job, []):
            key = "oom_kills" if controller == "memory" else "pids_max_hits"
            with contextlib.suppress(OSError, ValueError):
                out[key] = _count(controller, path) - before
        return out

    def remove(self, job: int) -> None:
        """Hand the job's cgroups back once its processes are gone."""
        self.pending.extend((c, p) for c, p, _ in self._jobs.pop(job, []))
        self.retry()

    def retry(self) -> None:
        """Recycle the cgroups whose processes have all exited."""
        still = []
        for controller, path in self.pending:
            try:
                with open(f"{path}/cgroup.procs") as f:
                    empty = not f.read().strip()
            except OSError:
                continue
            if empty:
                self._free[controller].append(path)
            else:
                still.append((controller, path))
        self.pending = still

    def close(self) -> None:
        """Remove every job cgroup, then the helper's own parent directories."""
        deadline = time.monotonic() + 2.0
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)  # the killed jobs' processes are still exiting
            self.retry()
        for paths in self._free.values():
            for path in paths:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        for parent in self._parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _count(controller: str, path: str) -> int:
    name, field = _EVENTS[controller]
    return _field(f"{path}/{name}", field)


def _field(path: str, name: str) -> int:
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return 0
