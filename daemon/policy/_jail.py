"""Paths inside a tool's working directory (its jail), symlinks resolved.

Checks here decide before anything runs; the file tools open paths component by component
with O_NOFOLLOW at run time, and the kernel sandbox holds commands to the jail.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from execgate.daemon.model import Denial, DenialKind


def resolve_cwd(jail: Path, requested: str, rule: str) -> Path:
    """The real directory a command starts in; refused unless it resolves inside ``jail``."""
    if "\0" in requested:
        raise Denial(DenialKind.INVALID_ARGUMENT, "cwd contains a NUL byte")
    target = Path(requested) if requested.startswith("/") else jail / requested
    # Containment before existence: the answer for a path outside the jail must not reveal
    # whether it exists.
    real = target.resolve(strict=False)
    if not real.is_relative_to(jail):
        raise Denial(DenialKind.POLICY_DENIED,
                     f"cwd {requested!r} is outside the tool's working directory", rule)
    if not real.is_dir():
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"cwd {requested!r} is not a directory inside the working directory")
    return real


def check_relative(path: str, rule: str, name: str = "path") -> str:
    """A function tool's path argument: relative, no ``..``, no NUL. Returns it normalised."""
    if "\0" in path:
        raise Denial(DenialKind.INVALID_ARGUMENT, f"{name} contains a NUL byte")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise Denial(DenialKind.POLICY_DENIED,
                     f"{name} {path!r} leaves the tool's working directory: give a path "
                     "relative to it, without '..'", rule)
    return str(pure)
