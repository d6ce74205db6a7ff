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


class JobCgroups:
    """Creates, reads and removes each job's cgroups."""

    def __init__(self, host: dict[str, Any]) -> None:
        self._parents: dict[str, str] = host.get("parents", {})
        self._dirs: dict[int, list[str]] = {}
        self.pending: list[str] = []
        """Directories whose processes were still exiting at removal; retried."""

    def create(self, job: int, limits: dict[str, int] | None) -> list[str]:
        """Make the job's cgroups with their limits; returns the cgroup.procs to join."""
        if not limits:
            return []
        dirs = self._dirs.setdefault(job, [])
        procs = []
        for controller, key in (("pids", "pids_max"), ("memory", "memory_max")):
            if limits.get(key) is None:
                continue
            path = f"{self._parents[controller]}/job-{job}"
            os.mkdir(path)
            dirs.append(path)
            _write(f"{path}/{_LIMIT_FILES[controller]}", limits[key])
            if controller == "memory" and os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):
                _write(f"{path}/memory.memsw.limit_in_bytes", limits[key])  # no swap escape
            procs.append(f"{path}/cgroup.procs")
        return procs

    def events(self, job: int) -> dict[str, int]:
        """How often the job hit its limits: OOM kills and refused forks."""
        out = {"oom_kills": 0, "pids_max_hits": 0}
        for path in self._dirs.get(job, []):
            with contextlib.suppress(OSError, ValueError):
                if "/memory/" in path:
                    out["oom_kills"] = _field(f"{path}/memory.oom_control", "oom_kill")
                else:
                    out["pids_max_hits"] = _field(f"{path}/pids.events", "max")
        return out

    def remove(self, job: int) -> None:
        """Remove the job's cgroups (later, if its processes are still exiting)."""
        self.pending.extend(self._dirs.pop(job, []))
        self.retry()

    def close(self) -> None:
        """Remove what is left, then the helper's own parent directories."""
        deadline = time.monotonic() + 2.0
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)  # the killed jobs' processes are still exiting
            self.retry()
        for parent in self._parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    def retry(self) -> None:
        """Try again to remove directories that were busy."""
        still = []
        for path in self.pending:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                still.append(path)
        self.pending = still


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _field(path: str, name: str) -> int:
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return 0
