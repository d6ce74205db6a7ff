"""Landlock through its three system calls (no maintained Python binding exists).

Landlock confines the calling thread and what it executes: a ruleset names the access rights
it handles, rules grant some back beneath given paths, and restrict_self applies it for good.
Everything handled and not granted is denied. The best ABI the kernel offers is used;
rights a kernel does not know are left out rather than failing.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# Filesystem rights, by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1,
              5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
         | MAKE_SYM | REFER | TRUNCATE)
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class LandlockError(OSError):
    """Landlock could not be set up; the message names the step."""


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 when Landlock is absent or disabled."""
    version = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(version))


@dataclass(frozen=True)
class Ruleset:
    """What a confined process may touch."""

    read: tuple[str, ...]
    """Paths (and everything beneath) that may be read and executed."""
    write: tuple[str, ...]
    """Paths that may also be written."""
    deny_tcp: bool
    """Refuse TCP bind and connect (ABI 4+), on top of the empty network namespace."""


def prepare(rules: Ruleset, abi: int) -> int:
    """A ruleset fd for ``rules``. Call before dropping privileges: the paths are opened
    now, by a process that can still reach them."""
    ruleset = create(abi, rules.deny_tcp)
    try:
        allow(ruleset, rules.read, READ, abi)
        allow(ruleset, rules.write, READ | WRITE, abi)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def create(abi: int, deny_tcp: bool) -> int:
    """An empty ruleset handling every right of ``abi``: all is denied until allowed."""
    if abi < 1:
        raise LandlockError("Landlock is not available on this kernel")
    handled_fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
    attr = _RulesetAttr(handled_access_fs=handled_fs,
                        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP)
                        if deny_tcp and abi >= 4 else 0,
                        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        raise LandlockError(ctypes.get_errno(), "landlock_create_ruleset failed")
    return int(ruleset)


def allow(ruleset: int, paths: tuple[str, ...] | list[str], access: int, abi: int) -> None:
    """Grant ``access`` beneath each of ``paths`` (missing paths are skipped)."""
    for path in paths:
        _allow(ruleset, path, access & _FS_BY_ABI.get(abi, _FS_BY_ABI[5]))


def enforce(ruleset: int) -> None:
    """Confine this thread, and all it executes, to ``ruleset`` for good; closes it.
    Needs no_new_privs (or CAP_SYS_ADMIN)."""
    try:
        if _libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise LandlockError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


def _allow(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # a default path this host does not have
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_ONLY
        rule = _PathBeneath(allowed_access=access, parent_fd=fd)
        if _libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise LandlockError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)
