"""The local tokens of the embedded default: where daemons leave them, how clients find them.

``execgated serve`` without a config generates a token and stores it, readable only by its
owner, under the address it serves on; ``execgate`` and ``Client()`` use a token only for its
own address, so a token is never sent to a server it was not made for. One file holds a
token per address: a second daemon adds its own and leaves the first's alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

MAX_TOKENS = 64
"""Addresses remembered; the oldest entries (of daemons long gone) are dropped first."""


def token_path() -> Path:
    """``$EXECGATE_TOKEN_FILE``, else ``$XDG_STATE_HOME/execgate/token`` (~/.local/state)."""
    if explicit := os.environ.get("EXECGATE_TOKEN_FILE"):
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "execgate" / "token"


def _read(path: Path) -> dict[str, str]:
    """Target -> token; an unreadable or foreign file holds none."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    tokens = stored.get("tokens") if isinstance(stored, dict) else None
    if not isinstance(tokens, dict):
        return {}
    return {t: k for t, k in tokens.items() if isinstance(t, str) and isinstance(k, str)}


def write_local_token(target: str, token: str) -> Path:
    """Store ``token`` for ``target`` beside other addresses' tokens, mode 0600 in a 0700
    directory, replacing the file atomically under a lock (daemons may start together)."""
    path = token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(path.with_name(f".{path.name}.lock"),
                   os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tokens = _read(path)
        tokens.pop(target, None)  # re-inserted last: the file keeps the newest at its end
        tokens[target] = token
        tokens = dict(list(tokens.items())[-MAX_TOKENS:])
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": tokens}, f)
        os.replace(scratch, path)
    finally:
        os.close(lock)
    return path


def read_local_token(target: str) -> str | None:
    """The stored token made for ``target``; else None."""
    return _read(token_path()).get(target)
