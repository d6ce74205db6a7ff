"""A job's view of the filesystem: a root that holds only what the job may use.

Landlock decides what a job may read and write, but not what it may *reach*: connect() on a
pathname unix socket is not a Landlock right (ABI 7), and stat() is not governed either. So
each job gets its own root, built in its own mount namespace and entered with pivot_root: a
small read-only tmpfs with the tool's read paths bound read-only, its jail and write paths
bound writable, a private /tmp and /dev/shm, a minimal /dev, the job's own /proc, and the
unix sockets the tool names. Nothing else of the host exists there: no /run, /var/run, /home,
host /tmp, no daemon socket, no D-Bus or container runtime socket.

Building the read-only part costs two mount calls a path, so a pooled init does it while it
waits (``prepare``); a job adds only its own paths and pivots (``enter``). Plain module:
the helper and the inits import it, with no asyncio or structlog.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable

from execgate.daemon.sandbox import _linux

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
"""Device nodes every view has (Landlock still decides which are writable)."""
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2"}
# Mount flags the kernel locks on a mount inherited into a user namespace: a remount must
# keep them, so they are copied from the source.
_LOCKED = ((os.ST_NOSUID, _linux.MS_NOSUID), (os.ST_NODEV, _linux.MS_NODEV),
           (os.ST_NOEXEC, _linux.MS_NOEXEC), (os.ST_NOATIME, _linux.MS_NOATIME),
           (os.ST_NODIRATIME, _linux.MS_NODIRATIME), (os.ST_RELATIME, _linux.MS_RELATIME))


def prepare(root: str, read_paths: Iterable[str]) -> frozenset[str]:
    """Mount the view's tmpfs on ``root`` and bind ``read_paths`` into it read-only.

    Returns the read paths actually bound (a path missing on this host is skipped, as
    Landlock skips it).
    """
    _linux.mount("tmpfs", root, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                 "mode=0755,size=1m")
    paths = sorted(set(read_paths) - set(DEVICES) - {"/proc"})
    bound = {p for p in paths if _bind_read(root, p, paths)}
    os.mkdir(f"{root}/dev", 0o755)
    _linux.mount("tmpfs", f"{root}/dev", "tmpfs", _linux.MS_NOSUID, "mode=0755,size=64k")
    for device in DEVICES:
        if os.path.exists(device):
            _bind(device, root + device)
    for name, target in _DEV_LINKS.items():
        os.symlink(target, f"{root}/dev/{name}")
    os.mkdir(f"{root}/proc", 0o555)
    _bind("/proc", f"{root}/proc")  # this init's own /proc: only the job's processes
    return frozenset(bound)


def enter(root: str, prepared: frozenset[str], read_paths: Iterable[str],
          write_paths: Iterable[str], unix_sockets: Iterable[str], tmp_size: int) -> None:
    """Fit the prepared view to one job, make its root read-only and pivot into it.

    Read paths the job does not have are unmounted; its own extra read paths, its write
    paths (the jail among them) and its unix sockets are bound; /tmp and /dev/shm are new
    tmpfs of ``tmp_size``. Parents are mounted before children, so a jail under /tmp sits
    on the private /tmp and a write path inside a read path stays writable.
    """
    wanted = set(read_paths) - set(DEVICES) - {"/proc"}
    for path in sorted(prepared - wanted, reverse=True):
        target = root + path
        if os.path.islink(target):
            os.unlink(target)
            continue
        _linux.umount2(target, _linux.MNT_DETACH)
        with contextlib.suppress(OSError):  # the mount point itself must not show either
            (os.rmdir if os.path.isdir(target) else os.unlink)(target)
    mounts: list[tuple[str, str]] = [(p, "read") for p in sorted(wanted - prepared)]
    mounts += [(p, "write") for p in write_paths if p not in DEVICES]
    mounts += [(p, "socket") for p in unix_sockets]
    mounts += [("/tmp", "tmp"), ("/dev/shm", "tmp")]
    for path, kind in sorted(mounts, key=lambda m: m[0].count("/")):
        if kind == "read":
            _bind_read(root, path, wanted)
        elif kind == "tmp":
            os.makedirs(root + path, exist_ok=True)
            _linux.mount("tmpfs", root + path, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                         f"size={tmp_size},mode=1777")
        elif os.path.lexists(path):
            _bind(path, root + path)
    _linux.mount("none", root, None,
                 _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID
                 | _linux.MS_NODEV, None)
    # pivot_root(".", "."): the old root lands on top of the new one, then goes away; no
    # directory for it is needed in the (read-only) new root.
    os.chdir(root)
    _linux.pivot_root(".", ".")
    _linux.umount2(".", _linux.MNT_DETACH)
    os.chdir("/")


def _bind_read(root: str, path: str, others: Iterable[str]) -> bool:
    """Bind ``path`` read-only; a symlink whose target the view has anyway stays a symlink
    (``/bin -> usr/bin``), any other is bound as what it points to."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        if any(real == o or real.startswith(o.rstrip("/") + "/") for o in others if o != path):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
            return True
    if not os.path.exists(path):
        return False
    target = root + path
    _bind(path, target)
    flags = _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY
    locked = os.statvfs(path).f_flag
    for st_flag, ms_flag in _LOCKED:
        if locked & st_flag:
            flags |= ms_flag
    _linux.mount("none", target, None, flags, None)
    return True


def _bind(source: str, target: str) -> None:
    """Bind ``source`` (a directory, file, device or socket) at ``target``."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if stat.S_ISDIR(os.stat(source).st_mode):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        with contextlib.suppress(FileExistsError):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    _linux.mount(source, target, None, _linux.MS_BIND | _linux.MS_REC, None)
