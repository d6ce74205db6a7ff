"""Built-in file tools, confined to the tool's working directory by construction.

Paths are opened one component at a time from a descriptor of the jail, each with
O_NOFOLLOW, so neither ``..`` nor a symlink (planted before or during the call) can lead
out: a symlink anywhere in the path is refused rather than followed. Only regular files are
read or written (a FIFO or device would block or never end), and a file with more than one
hard link is never written, since its other name may be outside the jail.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from execgate.daemon.model import FunctionPlan

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ToolError(Exception):
    """A function tool could not do what was asked; the message says why, in the jail's terms."""


def _fail(exc: OSError, path: str) -> ToolError:
    reasons = {
        errno.ENOENT: "no such file or directory",
        errno.ELOOP: "a symbolic link is on the path, and links are not followed",
        errno.ENOTDIR: "a component of the path is not a directory (or is a symbolic link)",
        errno.EISDIR: "is a directory",
        errno.EEXIST: "already exists",
        errno.EACCES: "permission denied",
        errno.ENXIO: "is not a regular file",
    }
    return ToolError(f"{path}: {reasons.get(exc.errno or 0, exc.strerror or 'failed')}")


def open_beneath(jail: Path, path: str, flags: int, mode: int = 0o644) -> int:
    """An fd for ``path`` inside ``jail``; no component may be a symlink or ``..``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ToolError(f"{path}: '..' is not allowed")
    fd = os.open(jail, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        if not parts:
            result, fd = fd, -1
            return result
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    except OSError as exc:
        raise _fail(exc, path) from None
    finally:
        if fd >= 0:
            os.close(fd)


def read_file(plan: FunctionPlan) -> bytes:
    """The file's bytes, or the ``offset``/``limit`` window of it."""
    args = plan.arguments
    fd = open_beneath(plan.jail, args["path"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{args['path']}: is not a regular file")
        offset = int(args.get("offset", "0"))
        limit = int(args["limit"]) if "limit" in args else st.st_size - offset
        if limit > plan.max_file_bytes:
            raise ToolError(f"{args['path']}: {limit} bytes asked for; the limit is "
                            f"{plan.max_file_bytes} (read it in parts with offset and limit)")
        chunks, remaining = [], max(0, limit)
        while remaining:
            data = os.pread(fd, min(remaining, 1024 * 1024), offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
            remaining -= len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(plan: FunctionPlan) -> bytes:
    """Write ``content`` (UTF-8) to ``path``: overwrite (default), append, or create."""
    args = plan.arguments
    content = args["content"].encode()
    if len(content) > plan.max_file_bytes:
        raise ToolError(f"{args['path']}: content is {len(content)} bytes; the limit is "
                        f"{plan.max_file_bytes}")
    mode = args.get("mode", "overwrite")
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK
    flags |= {"append": os.O_APPEND, "create": os.O_EXCL}.get(mode, 0)
    fd = open_beneath(plan.jail, args["path"], flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{args['path']}: is not a regular file")
        if st.st_nlink > 1:
            raise ToolError(f"{args['path']}: has {st.st_nlink} hard links; refusing to write "
                            "a file that also has a name elsewhere")
        if mode == "overwrite":
            os.ftruncate(fd, 0)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return f"wrote {len(content)} bytes to {args['path']}\n".encode()


def list_directory(plan: FunctionPlan) -> bytes:
    """One entry a line, sorted: directories end in ``/``, symlinks in ``@``."""
    fd = open_beneath(plan.jail, plan.arguments["path"], _DIR_FLAGS)
    try:
        lines = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_symlink():
                    lines.append(entry.name + "@")
                elif entry.is_dir(follow_symlinks=False):
                    lines.append(entry.name + "/")
                else:
                    lines.append(entry.name)
    finally:
        os.close(fd)
    return "".join(line + "\n" for line in sorted(lines)).encode(errors="surrogateescape")


_HANDLERS = {"read_file": read_file, "write_file": write_file, "list_directory": list_directory}


def run_function(plan: FunctionPlan) -> bytes:
    """Run a built-in function tool; raises ToolError."""
    return _HANDLERS[plan.handler](plan)
