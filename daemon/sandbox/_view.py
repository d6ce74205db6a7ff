"""A job's view of the filesystem: a root that holds only what the job may use.

Landlock decides what a job may read and write, but not what it may *reach*: connect() on a
pathname unix socket is not a Landlock right (ABI 7), and stat() is not governed either. So
each job gets its own root, built in its own mount namespace and entered with pivot_root: a
small read-only tmpfs with the tool's read paths bound read-only, its jail and write paths
bound writable, a private /tmp and /dev/shm, a minimal /dev, the job's own /proc, and the
unix sockets the tool names. Nothing else of the host exists there: no /run, /var/run, /home,
host /tmp, no daemon socket, no D-Bus or container runtime socket.

A view depends only on the tool (its paths, sockets and /tmp size), so a pooled init builds
it whole while it waits, for the kind of job it will run, and pivots into it (``build``). The
host's root stays reachable at ``HOST`` until the init has done what needs it; then it is
detached (``leave_host``), still before any job arrives. Plain module: the helper and the inits
import it, with no asyncio or structlog.
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


HOST = "/dev/.host"
"""Where the host's root stays, inside a built view, until ``leave_host``."""


def build(root: str, read_paths: Iterable[str], write_paths: Iterable[str],
          unix_sockets: Iterable[str], tmp_size: int) -> None:
    """Build a view on ``root`` (an empty directory) and pivot into it.

    Read paths are bound read-only; write paths (the jail among them) and unix sockets
    writable; /tmp and /dev/shm are new tmpfs of ``tmp_size``. Parents are mounted before
    children, so a jail under /tmp sits on the private /tmp and a write path inside a read
    path stays writable. A path missing on this host is skipped, as Landlock skips it.
    """
    _linux.mount("tmpfs", root, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                 "mode=0755,size=1m")
    reads = sorted(set(read_paths) - set(DEVICES) - {"/proc"})
    for path in reads:
        _bind_read(root, path, reads)
    os.mkdir(f"{root}/dev", 0o755)
    _linux.mount("tmpfs", f"{root}/dev", "tmpfs", _linux.MS_NOSUID, "mode=0755,size=64k")
    for device in DEVICES:
        if os.path.exists(device):
            _bind(device, root + device)
    for name, target in _DEV_LINKS.items():
        os.symlink(target, f"{root}/dev/{name}")
    os.mkdir(f"{root}/proc", 0o555)
    _bind("/proc", f"{root}/proc")  # this init's own /proc: only the job's processes
    mounts: list[tuple[str, str]] = [(p, "write") for p in write_paths if p not in DEVICES]
    mounts += [(p, "socket") for p in unix_sockets]
    mounts += [("/tmp", "tmp"), ("/dev/shm", "tmp")]
    for path, kind in sorted(mounts, key=lambda m: m[0].count("/")):
        if kind == "tmp":
            os.makedirs(root + path, exist_ok=True)
            _linux.mount("tmpfs", root + path, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                         f"size={tmp_size},mode=1777")
        elif os.path.lexists(path):
            _bind(path, root + path)
    os.mkdir(root + HOST, 0o700)
    _linux.mount("none", root, None,
                 _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID
                 | _linux.MS_NODEV, None)
    os.chdir(root)
    _linux.pivot_root(".", HOST.lstrip("/"))
    os.chdir("/")


def leave_host() -> None:
    """Detach the host's root from the view: from now on only the view exists."""
    _linux.umount2(HOST, _linux.MNT_DETACH)
    os.rmdir(HOST)
    # /dev holds only links and the devices' mount points (the host's root was the last
    # thing it held): read-only, so that no job can re-point /dev/stdout or leave a file
    # for a later job of the same init.
    _linux.mount("none", "/dev", None,
                 _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID, None)


def _bind_read(root: str, path: str, others: Iterable[str]) -> None:
    """Bind ``path`` read-only; a symlink whose target the view has anyway stays a symlink
    (``/bin -> usr/bin``), any other is bound as what it points to."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        if any(real == o or real.startswith(o.rstrip("/") + "/") for o in others if o != path):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
            return
    if not os.path.exists(path):
        return
    target = root + path
    _bind(path, target)
    flags = _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY
    locked = os.statvfs(path).f_flag
    for st_flag, ms_flag in _LOCKED:
        if locked & st_flag:
            flags |= ms_flag
    _linux.mount("none", target, None, flags, None)


def _bind(source: str, target: str) -> None:
    """Bind ``source`` (a directory, file, device or socket) at ``target``."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if stat.S_ISDIR(os.stat(source).st_mode):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        with contextlib.suppress(FileExistsError):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    _linux.mount(source, target, None, _linux.MS_BIND | _linux.MS_REC, None)
