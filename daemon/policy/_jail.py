"""Paths from requests, resolved beneath a tool's working directory (its jail).

The policy resolves a path with the same resolver the file tools open with at run time
(execgate.daemon.beneath): from a descriptor of the jail, never climbing out of it, following
only symlinks that stay inside. What it names is reported by its real path and identity, so
the job's init can re-open exactly that directory; every bad path is a Denial naming its rule.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from execgate.daemon.beneath import Found, PathRefused, find
from execgate.daemon.model import Denial, DenialKind


def resolve_cwd(jail: Path, requested: str, rule: str) -> Found:
    """The directory a command starts in; refused unless it resolves inside ``jail``."""
    found = resolve_path(jail, requested, rule, "cwd")
    if not stat.S_ISDIR(found.mode):
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"cwd {requested!r} is not a directory inside the working directory", rule)
    return found


def resolve_path(jail: Path, requested: str, rule: str, name: str = "path") -> Found:
    """What ``requested`` (relative to ``jail``, or absolute inside it) names; raises Denial.

    Containment before existence: a path whose text leaves the jail is refused without
    looking, so the answer for a path outside never reveals whether it exists.
    """
    relative = _inside(jail, requested, rule, name)
    try:
        found = find(jail, relative)
    except PathRefused as refused:
        kind = (DenialKind.POLICY_DENIED if refused.escapes else
                DenialKind.PERMISSION_DENIED if refused.forbidden else
                DenialKind.INVALID_ARGUMENT)
        raise Denial(kind, f"{name} {requested!r}: {refused.reason}", rule) from None
    try:
        # The plan goes over the wire as UTF-8 text.
        str(found.path).encode()
    except UnicodeError:
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"{name} {requested!r} resolves to a name that is not valid UTF-8",
                     rule) from None
    return found


def _inside(jail: Path, requested: str, rule: str, name: str) -> str:
    if "\0" in requested:
        raise Denial(DenialKind.INVALID_ARGUMENT, f"{name} contains a NUL byte", rule)
    pure = PurePosixPath(requested)
    if pure.is_absolute():
        if not pure.is_relative_to(jail):
            raise _outside(requested, rule, name)
        pure = pure.relative_to(jail)
    if PurePosixPath(os.path.normpath(pure)).parts[:1] == ("..",):
        raise _outside(requested, rule, name)
    return str(pure)


def _outside(requested: str, rule: str, name: str) -> Denial:
    return Denial(DenialKind.POLICY_DENIED,
                  f"{name} {requested!r} is outside the tool's working directory", rule)


def check_relative(path: str, rule: str, name: str = "path") -> str:
    """A function tool's path argument: relative, no ``..``, no NUL. Returns it normalised."""
    if "\0" in path:
        raise Denial(DenialKind.INVALID_ARGUMENT, f"{name} contains a NUL byte", rule)
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise Denial(DenialKind.POLICY_DENIED,
                     f"{name} {path!r} leaves the tool's working directory: give a path "
                     "relative to it, without '..'", rule)
    return str(pure)
