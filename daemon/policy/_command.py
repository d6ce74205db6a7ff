"""argv rules: a bare name matched exactly, then resolved through the daemon's fixed PATH."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from execgate.daemon.config import ToolConfig
from execgate.daemon.model import Denial, DenialKind

MAX_ARG_BYTES = 128 * 1024
"""Linux's MAX_ARG_STRLEN: the kernel refuses a longer single argument anyway."""
MAX_ARGV_BYTES = 1024 * 1024
MAX_ARGS = 4096


def check_argv(argv: Sequence[str]) -> None:
    """Refuse argv that no command should receive: empty, NUL bytes, oversized."""
    if not argv:
        raise Denial(DenialKind.INVALID_ARGUMENT, "argv is empty: give the command to run")
    if len(argv) > MAX_ARGS:
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"argv has {len(argv)} arguments; the limit is {MAX_ARGS}")
    total = 0
    for i, arg in enumerate(argv):
        if "\0" in arg:
            raise Denial(DenialKind.INVALID_ARGUMENT, f"argv[{i}] contains a NUL byte")
        size = len(arg.encode())
        if size > MAX_ARG_BYTES:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"argv[{i}] is {size} bytes; the limit is {MAX_ARG_BYTES}")
        total += size + 1
    if total > MAX_ARGV_BYTES:
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"argv is {total} bytes; the limit is {MAX_ARGV_BYTES}")


def check_command(name: str, tool_name: str, tool: ToolConfig) -> None:
    """Apply denied_commands, then allowed_commands / deny_by_default, to argv[0].

    The match is exact: no case folding, no Unicode normalisation, no trimming, so that what
    the policy author wrote is what is compared.
    """
    where = f"tools.{tool_name}"
    if not name or "/" in name or name in (".", ".."):
        raise Denial(DenialKind.POLICY_DENIED,
                     f"argv[0] {name!r} must be a bare command name; the daemon resolves it "
                     "through its own PATH", f"{where}.allowed_commands")
    if name in tool.denied_commands:
        raise Denial(DenialKind.POLICY_DENIED, f"command {name!r} is denied",
                     f"{where}.denied_commands")
    if name not in tool.allowed_commands and tool.deny_by_default:
        raise Denial(DenialKind.POLICY_DENIED,
                     f"command {name!r} is not in allowed_commands and deny_by_default is true",
                     f"{where}.deny_by_default")


def resolve_command(name: str, search_path: str) -> str:
    """The absolute path that will be executed: the first executable file named ``name``."""
    for directory in search_path.split(":"):
        if not directory.startswith("/"):
            continue  # a relative PATH entry would depend on the cwd: never
        candidate = os.path.join(directory, name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    raise Denial(DenialKind.COMMAND_NOT_FOUND,
                 f"command {name!r} is allowed but not found on the daemon's PATH",
                 "server.path")
