"""The few Linux calls Python 3.11's os module lacks: unshare, setns, mount, umount2,
pivot_root, openat2, prctl."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND = 0x20, 0x1000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 1 << 21
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2

RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS = 0x01, 0x02, 0x04
RESOLVE_BENEATH = 0x08
O_PATH = 0o10000000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYSCALLS = {"x86_64": {"pivot_root": 155, "openat2": 437, "ioprio_get": 252,
                        "sched_getattr": 315},
             "aarch64": {"pivot_root": 41, "openat2": 437, "ioprio_get": 31,
                         "sched_getattr": 275}}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_MACHINE = os.uname().machine
"""Asked once: a job's init resolves its working directory with openat2 on every job."""


def _syscall_number(name: str) -> int:
    numbers = _SYSCALLS.get(_MACHINE)
    if numbers is None:
        raise OSError(38, f"{name}: unsupported machine {_MACHINE}")  # ENOSYS
    return numbers[name]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    """Move this process into new namespaces."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Join the namespace ``fd`` refers to."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2)."""
    _check(_libc.mount(source.encode(), target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def prctl(option: int, value: int) -> None:
    """prctl(2) with one argument."""
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl({option})")


def umount2(target: str, flags: int) -> None:
    """umount2(2)."""
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): glibc has no wrapper."""
    _check(int(_libc.syscall(ctypes.c_long(_syscall_number("pivot_root")),
                             new_root.encode(), put_old.encode())), "pivot_root")


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` below ``dir_fd`` under the ``resolve`` restrictions.

    Raises OSError (ENOSYS where this kernel or machine has none), without the path in the
    error: the caller decides how to name it.
    """
    # openat2 refuses a mode without O_CREAT (EINVAL), unlike open(2), which ignores it.
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    for _ in range(_OPENAT2_TRIES):
        fd = int(_libc.syscall(ctypes.c_long(_syscall_number("openat2")),
                               ctypes.c_int(dir_fd), os.fsencode(path or "."),
                               ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0:
            return fd
        errno = ctypes.get_errno()
        # EAGAIN: a ".." met a rename or mount anywhere on the host while it resolved
        # (RESOLVE_BENEATH cannot then prove it stayed beneath); the kernel asks for a retry.
        if errno != 11:
            break
    raise OSError(errno, os.strerror(errno))


_OPENAT2_TRIES = 64
"""Attempts before a ".." lookup that keeps meeting renames elsewhere is given up (EAGAIN)."""


_IOPRIO_WHO_PROCESS = 1
_SCHED_ATTR_SIZE = 56
"""struct sched_attr up to its utilisation clamps (Linux 5.3)."""


def ioprio() -> int:
    """This process's I/O priority (ioprio_get(2)), as the kernel encodes it."""
    value = int(_libc.syscall(ctypes.c_long(_syscall_number("ioprio_get")),
                              ctypes.c_int(_IOPRIO_WHO_PROCESS), ctypes.c_int(0)))
    _check(min(value, 0), "ioprio_get")  # a priority is >= 0, -1 an error
    return value


def sched_attr() -> bytes:
    """This process's scheduling attributes (sched_getattr(2)): policy, flags, nice,
    priority, deadline parameters and utilisation clamps, as the kernel's struct."""
    attr = ctypes.create_string_buffer(_SCHED_ATTR_SIZE)
    _check(int(_libc.syscall(ctypes.c_long(_syscall_number("sched_getattr")), ctypes.c_int(0),
                             attr, ctypes.c_uint(_SCHED_ATTR_SIZE), ctypes.c_uint(0))),
           "sched_getattr")
    return attr.raw
