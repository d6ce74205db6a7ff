"""SWE-ReX, the peer agents use, in a venv of its own: installed on first use, its server
started on loopback, driven by ``_swerex_client.py`` run with that venv's python (so this
process never imports swerex)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REQUIREMENTS = ["swe-rex==1.4.0", "aiohttp"]
CLIENT = Path(__file__).with_name("_swerex_client.py")
_SERVING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class SwerexUnavailable(Exception):
    """SWE-ReX could not be installed or started; the message says why."""


def venv_dir() -> Path:
    """Where SWE-ReX's venv lives: the user's cache, kept between runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "execgate-bench" / "swerex-venv"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def install(venv: Path) -> Path:
    """SWE-ReX's venv at ``venv``, made and filled unless it already imports swerex; its python."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import aiohttp, swerex.runtime.remote"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing {' '.join(REQUIREMENTS)} into {venv} ...", flush=True)
    steps = ([sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
             check)
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise SwerexUnavailable(f"{' '.join(step[:4])} failed: {_last_line(done.stderr)}")
    return python


def _discard(stream: IO[str]) -> None:
    for _ in stream:
        pass


@dataclass(frozen=True)
class SwerexServer:
    """A running ``swerex-remote`` and how to reach it."""

    python: Path
    pid: int
    port: int
    token: str

    def measure(self, measurement: str, *args: int | str) -> dict[str, Any]:
        """Run one of ``_swerex_client.py``'s measurements; its JSON result."""
        argv = [str(self.python), str(CLIENT), str(self.port), self.token, measurement,
                *map(str, args)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"SWE-ReX {measurement}: {_last_line(done.stderr)}")
        result: dict[str, Any] = json.loads(_last_line(done.stdout))
        return result


@contextmanager
def serve(python: Path) -> Iterator[SwerexServer]:
    """``swerex-remote`` on 127.0.0.1 (a port the kernel picks), stopped when the block ends."""
    token = secrets.token_hex(16)
    argv = [str(python.with_name("swerex-remote")), "--host", "127.0.0.1", "--port", "0",
            "--auth-token", token]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    drainer = threading.Thread(target=_discard, args=(proc.stderr,), daemon=True)
    try:
        said = []
        for line in proc.stderr:  # blocks until uvicorn says where it listens
            said.append(line)
            if match := _SERVING.search(line):
                break
        else:
            raise SwerexUnavailable(f"swerex-remote did not start: {_last_line(''.join(said))}")
        # Its log must keep flowing, or the server blocks on a full pipe.
        drainer.start()
        yield SwerexServer(python, proc.pid, int(match.group(1)), token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drainer.is_alive():
            drainer.join()
        proc.stderr.close()
