"""``execgated install-systemd``: put the shipped systemd files where systemd looks for them.

The unit, the socket unit, the sysusers.d and tmpfiles.d files travel in the wheel as package
data (``execgate.daemon.units``, with the example policies in ``execgate.daemon.examples``),
so a pip user needs no clone. The unit's ``ExecStart`` is rewritten to the execgated being run;
a file someone changed is never overwritten without ``force``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["InstallError", "Placed", "add_command", "default_execgated", "install_systemd",
           "run_command"]

PLACES = {
    "execgated.service": "etc/systemd/system/execgated.service",
    "execgate.socket": "etc/systemd/system/execgate.socket",
    "execgate.sysusers.conf": "usr/lib/sysusers.d/execgate.conf",
    "execgate.tmpfiles.conf": "usr/lib/tmpfiles.d/execgate.conf",
}
"""Each shipped file and where it goes beneath the prefix."""

EXAMPLES = "usr/share/execgate/policies"
"""Where the example policies go beneath the prefix."""

# systemd would split a path at whitespace and expand % specifiers and $ variables in it.
_UNIT_UNSAFE = re.compile(r"[\s%$\"'\\;]")


class InstallError(Exception):
    """A file could not be placed; the message says which and what to do."""


@dataclass(frozen=True)
class Placed:
    """One file ``install_systemd`` looked after."""

    path: Path
    """Where it is, beneath the prefix."""
    written: bool
    """False when the file was already there with this content."""


def default_execgated() -> Path:
    """The execgated beside the Python running this one (the venv's console script)."""
    return Path(sys.executable).with_name("execgated")


def _contents(execgated: Path) -> dict[str, str]:
    """What each file beneath the prefix should hold."""
    units = resources.files("execgate.daemon.units")
    wanted = {}
    for name, place in PLACES.items():
        text = units.joinpath(name).read_text()
        if name == "execgated.service":
            text, count = re.subn(r"^ExecStart=\S+", f"ExecStart={execgated}", text,
                                  flags=re.M)
            assert count == 1, "the shipped unit has one ExecStart"
        wanted[place] = text
    examples = resources.files("execgate.daemon.examples")
    for entry in examples.iterdir():
        if entry.name.endswith(".yaml"):
            wanted[f"{EXAMPLES}/{entry.name}"] = entry.read_text()
    return wanted


def _check_execgated(execgated: Path) -> None:
    if not execgated.is_absolute() or _UNIT_UNSAFE.search(str(execgated)):
        raise InstallError(f"--execgated must be an absolute path without spaces, quotes, "
                           f"'%' or '$' (systemd would read them): {str(execgated)!r}")
    if not os.access(execgated, os.X_OK) or not execgated.is_file():
        raise InstallError(f"{execgated} is not an executable file: give the execgated the "
                           "service should run with --execgated PATH")


def _write(path: Path, text: str) -> None:
    """Replace ``path`` in one step (a reader sees the old file or the new one), mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def install_systemd(prefix: Path, execgated: Path, force: bool = False) -> list[Placed]:
    """Write the unit, socket, sysusers.d and tmpfiles.d files and the example policies
    beneath ``prefix`` (``/`` on a real host). Refuses, writing nothing, when a file there
    differs from what would be written, unless ``force``."""
    _check_execgated(execgated)
    wanted = {prefix / place: text for place, text in _contents(execgated).items()}
    current: dict[Path, str | None] = {}
    for path in wanted:
        try:
            current[path] = path.read_text()
        except FileNotFoundError:
            current[path] = None
        except (OSError, UnicodeDecodeError) as exc:
            raise InstallError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
                               ) from None
    changed = [p for p, text in wanted.items() if current[p] not in (None, text)]
    if changed and not force:
        raise InstallError("these files differ from what would be written (changed by hand, "
                           "or by another version); compare them, then run again with "
                           "--force to replace them: " + ", ".join(map(str, changed)))
    placed = []
    for path, text in wanted.items():
        if current[path] != text:
            try:
                _write(path, text)
            except OSError as exc:
                raise InstallError(f"cannot write {path}: {exc.strerror}") from None
        placed.append(Placed(path=path, written=current[path] != text))
    return placed


NEXT_STEPS = """\
next, as root (docs/deploy.md):
  systemd-sysusers && systemd-tmpfiles --create
  cp {prefix}/{examples}/host.yaml /etc/execgate/policy.yaml   # then edit it
  systemctl daemon-reload && systemctl enable --now execgate.socket execgated.service"""


def add_command(commands: Any) -> None:
    """The ``install-systemd`` subcommand's arguments (``commands``: argparse's subparsers)."""
    cmd = commands.add_parser(
        "install-systemd", help="write the systemd unit, socket, sysusers.d and tmpfiles.d "
        "files and the example policies")
    cmd.add_argument("--prefix", type=Path, default=Path("/"),
                     help="root to write beneath (default: /)")
    cmd.add_argument("--execgated", type=Path, default=None,
                     help="the execgated the unit runs (default: the one beside this Python)")
    cmd.add_argument("--force", action="store_true",
                     help="replace files that differ from what would be written")


def run_command(args: argparse.Namespace) -> int:
    """Carry out ``install-systemd``: 0 when every file is in place, 2 when one is refused."""
    try:
        placed = install_systemd(args.prefix, args.execgated or default_execgated(),
                                 force=args.force)
    except InstallError as exc:
        print(f"execgated: {exc}", file=sys.stderr)
        return 2
    for item in placed:
        print(f"{'wrote' if item.written else 'unchanged'}  {item.path}")
    print(NEXT_STEPS.format(prefix=str(args.prefix).rstrip("/"), examples=EXAMPLES))
    return 0
