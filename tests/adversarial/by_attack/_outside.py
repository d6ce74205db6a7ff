"""Checks made from outside a job: what a confined run must not have changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Canary:
    """A file outside every jail, and what it held when planted."""

    path: Path
    digest: str

    @classmethod
    def plant(cls) -> Canary:
        """A file anyone may write, rename or delete, in a directory anyone may write: only
        the jail stands between a job and it (whichever user the job runs as)."""
        directory = Path(tempfile.mkdtemp(prefix="execgate-canary-"))
        directory.chmod(0o777)
        path = directory / "canary"
        path.write_text("the host's file\n")
        path.chmod(0o666)
        return cls(path, hashlib.sha256(path.read_bytes()).hexdigest())

    def remove(self) -> None:
        """Take the canary and its directory away again."""
        shutil.rmtree(self.path.parent, ignore_errors=True)

    def untouched(self) -> bool:
        """Still there, with the same bytes."""
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest() == self.digest
        except OSError:
            return False


def host_marker() -> Path:
    """A path in the host's /tmp that no job may create (each test its own)."""
    return Path("/tmp") / f"execgate-pwned-{uuid.uuid4().hex[:12]}"


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker``."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = p.info.get("cmdline") or []
        if any(marker in part for part in cmdline):
            found.append(p.info["pid"])
    return found


def sleep_marker() -> str:
    """A sleep duration no other process uses, to find a job's process from outside."""
    return str(900_000 + int.from_bytes(os.urandom(3), "big") % 99_999)
