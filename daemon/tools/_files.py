"""Built-in file tools, confined to the tool's working directory by construction.

Paths are opened beneath a descriptor of the jail (execgate.daemon.beneath), the resolver the
policy checked them with: neither ``..`` nor a symlink planted before or during the call can
lead out; a symlink that stays inside is followed. Only regular files are read or written (a
FIFO or device would block or never end), and a file with more than one hard link is never
written, since its other name may be outside the jail.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from execgate.daemon import beneath
from execgate.daemon.model import FunctionPlan

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class ToolError(Exception):
    """A function tool could not do what was asked; the message says why, in the jail's terms."""


def open_beneath(jail: Path, path: str, flags: int, mode: int = 0o644) -> int:
    """An fd for ``path`` beneath ``jail``, never outside it; raises ToolError."""
    try:
        root = os.open(jail, beneath.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise ToolError("the tool's working directory cannot be opened") from None
    try:
        return beneath.open_beneath(root, path, flags, mode)
    except beneath.PathRefused as refused:
        raise ToolError(f"{path}: {refused.reason}") from None
    finally:
        os.close(root)


def read_file(plan: FunctionPlan) -> bytes:
    """The file's bytes, or the ``offset``/``limit`` window of it."""
    args = plan.arguments
    fd = open_beneath(plan.jail, args["path"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{args['path']}: is not a regular file")
        # The policy bounded both below 2**63; an offset past the end reads nothing, and
        # is never handed to pread, where offset + count could overflow (EINVAL).
        offset = min(int(args.get("offset", "0")), st.st_size)
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
    try:
        return _HANDLERS[plan.handler](plan)
    except OSError as exc:  # reading, writing or listing an opened file failed
        reason = beneath.refusal(exc.errno or 0).reason
        raise ToolError(f"{plan.arguments.get('path', '.')}: {reason}") from None
