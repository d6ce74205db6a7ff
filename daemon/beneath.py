"""Opening a path from a request beneath a directory (a jail) that it can never leave.

The kernel resolves the path from a descriptor of the jail with openat2(2) and
RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: ``..`` above the jail, an absolute path or symlink,
and /proc's magic links all fail, at every step, however the tree changes meanwhile. Where the
kernel has no openat2 (ENOSYS), the same rules are kept by a walk in userspace that opens one
component at a time with O_NOFOLLOW and reads each symlink itself instead of letting the
kernel follow it. Symlinks that stay beneath the jail are followed by both; what a path
really names is read back from the open descriptor, never from the path's text.

Python 3.11 has no ``os.openat2``: the sandbox's ctypes wrapper serves both the daemon and
the job's init, which finds its working directory again the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from execgate.daemon.sandbox import _linux
from execgate.daemon.sandbox._linux import O_PATH, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS

__all__ = ["O_PATH", "Found", "PathRefused", "find", "open_beneath", "openat2", "refusal", "walk"]

_MAX_LINKS = 40  # the kernel's own bound on symlinks followed in one lookup
_RETRIES = 4
_LOOKUP = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

class PathRefused(Exception):
    """A path that cannot be opened beneath its jail; ``reason`` says why in the jail's
    terms (never a host path), ``escapes`` when following it would leave the jail."""

    def __init__(self, reason: str, *, escapes: bool = False, forbidden: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.escapes = escapes
        """The path (or a link on it) leads outside the jail: a policy refusal."""
        self.forbidden = forbidden
        """The daemon may not search or open something on the path."""


@dataclass(frozen=True, slots=True)
class Found:
    """What a path names beneath a jail, read from the descriptor the resolution opened."""

    path: Path
    """The real path: the jail followed by components none of which is a symlink."""
    identity: tuple[int, int]
    """(st_dev, st_ino)."""
    mode: int
    """st_mode, for the file type."""


_REASONS = {
    errno.EXDEV: "leads outside the tool's working directory",
    errno.ELOOP: "passes through a symbolic link loop, too many links, or a /proc link",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENAMETOOLONG: "a name on the path is longer than 255 bytes, or the path is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENXIO: "is not a regular file",
}


def refusal(code: int) -> PathRefused:
    """The refusal for an errno met while opening a path beneath a jail."""
    reason = _REASONS.get(code) or os.strerror(code).lower()
    return PathRefused(reason, escapes=code == errno.EXDEV,
                       forbidden=code in (errno.EACCES, errno.EPERM))


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0,
            resolve: int = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) -> int:
    """openat2(2) beneath ``dir_fd``; raises OSError, ENOSYS where this kernel or machine
    has none."""
    return _linux.openat2(dir_fd, path, flags, resolve, mode)


def walk(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """The userspace twin of :func:`openat2` beneath ``dir_fd``; raises OSError (EXDEV for
    a way out, ELOOP past 40 links). ``..`` goes back along the descriptors this walk
    opened, so it cannot climb above ``dir_fd``; the kernel never follows a link here."""
    if path.startswith("/"):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    todo = deque(path.split("/"))
    dirs = [os.open(".", _LOOKUP, dir_fd=dir_fd)]
    links = 0
    try:
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if len(dirs) == 1:
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
                os.close(dirs.pop())
                continue
            target = _link(part, dirs[-1], creating=not todo and bool(flags & os.O_CREAT))
            if target is not None:
                if not todo and flags & os.O_CREAT and flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if target.startswith("/"):
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
                todo.extendleft(reversed(target.split("/")))
                continue
            if not todo:
                return _open_last(part, dirs[-1], flags, mode)
            dirs.append(os.open(part, _LOOKUP, dir_fd=dirs[-1]))
        # The path named a directory already on the walk ("", ".", "a/..", "a/").
        return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=dirs[-1])
    finally:
        for fd in dirs:
            os.close(fd)


def _link(name: str, dir_fd: int, creating: bool) -> str | None:
    """The text of the symlink ``name``, or None when it is something else (or absent and
    about to be created)."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL or (exc.errno == errno.ENOENT and creating):
            return None
        raise


def _open_last(name: str, dir_fd: int, flags: int, mode: int) -> int:
    # A link that appeared since _link looked is refused (ELOOP), never followed.
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    if flags & O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    return fd


def open_beneath(dir_fd: int, path: str, flags: int, mode: int = 0o644) -> int:
    """A descriptor for ``path`` beneath ``dir_fd`` (a relative path; symlinks followed only
    while they stay beneath it); raises PathRefused."""
    if "\0" in path:
        raise PathRefused("contains a NUL byte")
    try:
        for _ in range(_RETRIES):
            try:
                return openat2(dir_fd, path, flags, mode)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    break
                # EAGAIN: a rename somewhere on the host raced a ``..``. Past a few tries
                # the walk answers: it never asks the kernel for ``..``, so it is not raced.
                if exc.errno != errno.EAGAIN:
                    raise
        return walk(dir_fd, path, flags, mode)
    except OSError as exc:
        raise refusal(exc.errno or errno.EIO) from None
    except ValueError:  # a name os.fsencode cannot encode
        raise PathRefused("is not a valid file name") from None


def find(jail: Path, path: str) -> Found:
    """What ``path`` (relative) names beneath ``jail``, following links that stay inside;
    raises PathRefused."""
    try:
        root = os.open(jail, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise PathRefused("the tool's working directory cannot be opened") from None
    try:
        fd = open_beneath(root, path, O_PATH)
    finally:
        os.close(root)
    try:
        st = os.fstat(fd)
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        raise PathRefused("cannot be examined") from None
    finally:
        os.close(fd)
    # The descriptor is what counts: a directory moved out of the jail (or deleted, which
    # /proc shows as "... (deleted)") since it was opened no longer lies beneath it.
    if (real != jail and not real.is_relative_to(jail)) or st.st_nlink == 0:
        raise PathRefused("was moved or removed while it was being resolved", escapes=True)
    return Found(path=real, identity=(st.st_dev, st.st_ino), mode=st.st_mode)
