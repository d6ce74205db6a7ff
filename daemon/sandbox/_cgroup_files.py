"""What both cgroup versions share: the one interface a version implements, the file
reads and writes, the ending of a cgroup's processes by pidfd, and the removal of cgroups
that killed daemons left.

Every job parent is named ``execgate-<helper pid>``, with ``job-N`` cgroups in it (and, on
cgroup v2, the ``daemon`` leaf the daemon and its helper moved into).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable
from typing import Any, Protocol

Limits = dict[str, Any]
"""A job's limits as the spawner sends them: ``pids_max`` and ``memory_max``, each None or
an int."""
Events = dict[str, int]
"""Counters of limits hit: ``oom_kills`` and ``pids_max_hits``."""

HELPER_MODULE = "execgate.daemon.sandbox._helper"
"""What a live helper's command line names: a parent whose pid runs anything else is stale."""
_PARENT = re.compile(r"execgate-([1-9][0-9]*)")
_MEMBER = re.compile(r"job-[1-9][0-9]*|daemon")


class Hierarchy(Protocol):
    """One cgroup version: where a job's cgroups go and what is written in them.

    A job holds one cgroup of each *kind* it needs (v1: one per controller it is limited
    by; v2: one cgroup with every controller), each kind pooled separately.
    """

    parents: dict[str, str]
    """Each kind's ``execgate-<pid>`` directory, in which its ``job-N`` cgroups are made."""

    def kinds(self, limits: Limits) -> list[str]:
        """The kinds of cgroup a job with ``limits`` needs."""

    def configure(self, kind: str, path: str, limits: Limits) -> None:
        """Write the job's limits into a new or reused cgroup; OSError when refused."""

    def counters(self, kind: str, path: str) -> list[tuple[str, str, str]]:
        """The cgroup's event counters (they only grow): (event, file, key in the file)."""

    def empty(self, path: str) -> bool:
        """Whether no process is left in the cgroup; OSError when it is not usable."""

    def kill(self, kind: str, path: str) -> None:
        """SIGKILL every process in the cgroup, and nothing else."""

    def close(self) -> None:
        """Once the job cgroups are gone: remove the parents and undo the set-up."""


def write(path: str, value: int | str) -> None:
    """Write one value to a cgroup file (one write: the kernel takes one value a write)."""
    with open(path, "w") as f:
        f.write(str(value))


def field(path: str, name: str) -> int:
    """The value of ``name`` in a flat-keyed file (``oom_kill 0``), 0 when it has none.
    Read with one read(2), without a Python file object: the daemon reads a job's counters
    after every job, on the call's path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 4096)  # a few short lines
    finally:
        os.close(fd)
    wanted = name.encode()
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        if key == wanted:
            return int(value)
    return 0


def words(path: str) -> list[str]:
    """A space-separated file (``cgroup.controllers``, ``cgroup.subtree_control``)."""
    with open(path) as f:
        return f.read().split()


def pids(procs: str) -> list[int]:
    """The processes a ``cgroup.procs`` file lists."""
    with open(procs) as f:
        return [int(line) for line in f.read().split()]


def kill_members(procs: str, inside: Callable[[list[str]], bool]) -> None:
    """SIGKILL each process ``procs`` lists, and nothing else: each pid is pinned with a
    pidfd and signalled only if ``inside`` says that very process's ``/proc/<pid>/cgroup``
    lines still put it in the cgroup."""
    try:
        members = pids(procs)
    except (OSError, ValueError):
        return
    for pid in members:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
            if inside(lines):  # had it exited and its pid been reused since, this fails
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


def remove_stale(directory: str) -> None:
    """Remove the ``execgate-<pid>`` parents in ``directory`` whose helper is gone.

    A parent is named after its helper's pid, so a parent of a pid that no helper has now
    belongs to a daemon that was killed before it could clean up. Our own pid's parent can
    only be such a leftover too (pids are reused), so its old jobs go. Only job cgroups,
    the daemon leaf and the parent are removed, each with rmdir: one that still holds a
    process, or a directory execgate did not make, stays.
    """
    for entry in os.scandir(directory):
        match = _PARENT.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match[1])
        if pid == os.getpid():
            remove_members(entry.path)
        elif not _is_helper(pid):
            remove_members(entry.path)
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


def remove_members(parent: str) -> None:
    """rmdir each empty ``job-N`` cgroup (and an empty ``daemon`` leaf) under ``parent``."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if _MEMBER.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
