"""The local token of the embedded default: where the daemon leaves it, how clients find it.

``execgated serve`` without a config generates a token, writes it readable only by its owner
together with the address it serves on, and ``execgate`` uses it only for that address, so
a token is never sent to a server it was not made for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def token_path() -> Path:
    """``$EXECGATE_TOKEN_FILE``, else ``$XDG_STATE_HOME/execgate/token`` (~/.local/state)."""
    if explicit := os.environ.get("EXECGATE_TOKEN_FILE"):
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "execgate" / "token"


def write_local_token(target: str, token: str) -> Path:
    """Store ``token`` for ``target``, mode 0600 in a 0700 directory, replacing atomically."""
    path = token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"target": target, "token": token}, f)
    os.replace(scratch, path)
    return path


def read_local_token(target: str) -> str | None:
    """The stored token if it was made for ``target``; else None."""
    try:
        stored = json.loads(token_path().read_text())
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict) and stored.get("target") == target:
        token = stored.get("token")
        return token if isinstance(token, str) else None
    return None
