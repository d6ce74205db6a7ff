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
import re
import signal
import time
from typing import Any

_ROOT = "/sys/fs/cgroup"
_LIMIT_FILES = {"pids": "pids.max", "memory": "memory.limit_in_bytes"}
_PARENT = re.compile(r"execgate-([1-9][0-9]*)")
_JOB = re.compile(r"job-[1-9][0-9]*")
HELPER_MODULE = "execgate.daemon.sandbox._helper"
"""What a live helper's command line names: a parent whose pid runs anything else is stale."""


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
    """Where this helper can make job cgroups: {"parents": {...}} or {"error": reason}.

    Beside its own, it removes the parents that daemons no longer running left behind.
    """
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
            _remove_stale(path)
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            return {"error": f"cannot create a {controller} cgroup under {path}: "
                             f"{exc.strerror} (run as root, or delegate the subtree)"}
        parents[controller] = parent
    return {"parents": parents}


def _remove_stale(directory: str) -> None:
    """Remove the ``execgate-<pid>`` parents in ``directory`` whose helper is gone.

    A parent is named after its helper's pid, so a parent of a pid that no helper has now
    belongs to a daemon that was killed before it could clean up. Our own pid's parent can
    only be such a leftover too (pids are reused), so its old jobs go. Only job cgroups
    and the parent are removed, each with rmdir: one that still holds a process, or a
    directory execgate did not make, stays.
    """
    for entry in os.scandir(directory):
        match = _PARENT.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match[1])
        if pid == os.getpid():
            _remove_jobs(entry.path)
        elif not _is_helper(pid):
            _remove_jobs(entry.path)
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)


def _is_helper(pid: int) -> bool:
    """Whether ``pid`` is a live sandbox helper (when in doubt: yes, keep its cgroups)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return HELPER_MODULE.encode() in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True


def _remove_jobs(parent: str) -> None:
    """rmdir each empty ``job-N`` cgroup under ``parent``."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if _JOB.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)


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
            if limits.get(key) is not None:
                held.append(self._limited(controller, limits[key]))
        return [f"{path}/cgroup.procs" for _, path, _ in held]

    def _limited(self, controller: str, value: int) -> tuple[str, str, int]:
        """A cgroup with its limit set, and its event count now.

        A reused cgroup the kernel will not take the limit in is removed, never pooled
        again (it would fail every later job the same way); a new one that fails raises.
        """
        while True:
            path, new = self._take(controller)
            try:
                _set_limit(controller, path, value)
                return controller, path, _count(controller, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                if new:
                    raise

    def _take(self, controller: str) -> tuple[str, bool]:
        """A pooled cgroup, or a new one: (path, whether new)."""
        if self._free[controller]:
            return self._free[controller].pop(), False
        while True:
            self._made += 1
            path = f"{self._parents[controller]}/job-{self._made}"
            with contextlib.suppress(FileExistsError):  # a leftover that still has a process
                os.mkdir(path)
                return path, True

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
        """Recycle the cgroups whose processes have all exited; end those left in the others."""
        still = []
        for controller, path in self.pending:
            try:
                with open(f"{path}/cgroup.procs") as f:
                    empty = not f.read().strip()
            except OSError:  # not a usable cgroup any more: not one to hand out again
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                continue
            if empty:
                self._free[controller].append(path)
            else:
                # The job is over: what is still here escaped its end (a job without a pid
                # namespace leaves its setsid and double-forked processes behind).
                _kill_members(controller, path)
                still.append((controller, path))
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
            _remove_jobs(parent)
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def _kill_members(controller: str, path: str) -> None:
    """SIGKILL every process in the job cgroup ``path``, and nothing else: each pid is
    pinned with a pidfd and signalled only if that very process is still in the cgroup."""
    member = f":{path.removeprefix(f'{_ROOT}/{controller}')}"
    try:
        with open(f"{path}/cgroup.procs") as f:
            pids = [int(line) for line in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                inside = any(line.endswith(member) and controller in line.split(":")[1]
                             for line in f.read().splitlines())
            if inside:  # had it exited and its pid been reused since, this signal fails
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


def _set_limit(controller: str, path: str, value: int) -> None:
    """Set a reused or new cgroup's limit.

    cgroup v1 keeps memory+swap >= memory at every write, so a cgroup a smaller tool left
    takes a larger limit only swap first, and a smaller one only memory first.
    """
    limit = f"{path}/{_LIMIT_FILES[controller]}"
    swap = f"{path}/memory.memsw.limit_in_bytes"
    if controller != "memory" or not os.path.exists(swap):
        _write(limit, value)
        return
    with open(limit) as f:
        raising = value >= int(f.read())
    for name in (swap, limit) if raising else (limit, swap):
        _write(name, value)  # the swap limit too: no escape into swap


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
