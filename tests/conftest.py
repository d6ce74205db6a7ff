"""Shared fixtures: a real execgated on loopback, started as its own process."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from execgate.client import Client

API_KEY = "test-key-0123456789"


def _doctor() -> str:
    """What ``execgated doctor`` says of this host (and this user)."""
    return subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "doctor"],
                          capture_output=True, text=True, timeout=60).stdout


DOCTOR = _doctor()
HAS_CGROUP = "ok    cgroup" in DOCTOR
"""Whether job cgroups are available; not to an unprivileged user on cgroup v1."""

TEST_POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_execution_time: 20s
    max_output_bytes: 1MiB
    kill_grace: 1s
    deny_by_default: true
    allowed_commands: [sh, "true", "false", echo, cat, sleep, "yes", head, printf, env, pwd, ls, wc,
                       python3, kill, missing-command-xyz, setsid, touch, id]
    denied_commands: [rm]
  read_file:
    type: function
  write_file:
    type: function
    max_file_bytes: 1MiB
  list_directory:
    type: function
  grep_search:
    type: function
agents:
  dev:
    visibility: public
    tools: [shell, read_file, write_file, list_directory, grep_search]
  ops:
    visibility: internal
    tools: [shell]
  helper:
    visibility: private
    tools: [shell]
server:
  drain_timeout: ${DRAIN_TIMEOUT:-1s}
  auth:
    enabled: true
    require_auth: ${REQUIRE_AUTH:-true}
    excluded_paths: [/health]
    api_keys:
      - {name: tester, key: "${TEST_API_KEY}"}
logger:
  level: info
  format: json
"""


@dataclass
class Daemon:
    """A running execgated and what it has said."""

    proc: subprocess.Popen[str]
    target: str
    root: Path
    stderr_lines: list[str] = field(default_factory=list)
    drainer: threading.Thread | None = None
    said: threading.Condition = field(default_factory=threading.Condition)

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    def client(self, token: str | None = API_KEY) -> Client:
        return Client(self.target, token=token if token is not None else "")

    def audit(self, event: str, **match: object) -> list[dict[str, Any]]:
        """Audit events named ``event`` (with the ``match`` fields), waiting up to 10 s for
        the first: the daemon logs before it answers, but its stderr arrives on its own."""
        def found() -> list[dict[str, Any]]:
            out = []
            for line in list(self.stderr_lines):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if (record.get("audit") and record.get("event") == event
                        and all(record.get(k) == v for k, v in match.items())):
                    out.append(record)
            return out

        with self.said:
            self.said.wait_for(found, timeout=10)
        return found()

    def errors(self, since: int = 0) -> list[str]:
        """Error-level lines the daemon wrote (from line ``since`` on), Python tracebacks and
        gRPC core's error lines: an expected event is never an error."""
        out = []
        for line in self.stderr_lines[since:]:
            try:
                record = json.loads(line)
            except ValueError:
                if line.startswith("Traceback") or re.match(r"E\d{4} ", line):
                    out.append(line)
                continue
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                out.append(line)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.drainer is not None:
            self.drainer.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


def daemon_command() -> list[str]:
    return [sys.executable, "-m", "execgate.daemon.cli"]


NOBODY = pwd.getpwnam("nobody")


def writable_by_commands(path: Path) -> Path:
    """Make ``path`` writable by the user commands run as (nobody, when tests run as root)."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


def start_daemon(root: Path, policy: str | None = TEST_POLICY, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), own_group: bool = False,
                 wrapper: tuple[str, ...] = (), pass_fds: tuple[int, ...] = (),
                 log: Path | None = None) -> Daemon:
    """Start execgated in ``root`` and return once it says it is serving; ``own_group``
    makes it lead a process group of its own (which a test may signal as a whole);
    ``wrapper`` is a command line put before the daemon's, which is handed ``pass_fds``.
    ``log``: its stderr goes to that file, as a service manager's would, and not through
    this process (a benchmark's; ``Daemon.audit`` then sees nothing)."""
    (root / "workspace").mkdir(exist_ok=True)
    writable_by_commands(root / "workspace")
    args = [*wrapper, *daemon_command(), "serve", "--listen", "127.0.0.1:0", *extra_args]
    if policy is not None:
        (root / "policy.yaml").write_text(policy)
        args += ["--config", str(root / "policy.yaml")]
    full_env = {**os.environ, "TEST_API_KEY": API_KEY, "XDG_STATE_HOME": str(root / "state"),
                "CGROUP": "required" if HAS_CGROUP else "optional", **(env or {})}
    with open(log, "w") if log is not None else contextlib.nullcontext() as log_file:
        proc = subprocess.Popen(args, cwd=root, env=full_env, stdout=subprocess.PIPE,
                                stderr=log_file or subprocess.PIPE, text=True,
                                pass_fds=pass_fds, process_group=0 if own_group else None)
    assert proc.stdout is not None
    daemon = Daemon(proc=proc, target="", root=root)
    stderr = proc.stderr

    def drain() -> None:
        assert stderr is not None
        for line in stderr:
            with daemon.said:
                daemon.stderr_lines.append(line)
                daemon.said.notify_all()

    if stderr is not None:
        daemon.drainer = threading.Thread(target=drain, daemon=True)
        daemon.drainer.start()
    for line in proc.stdout:  # blocks until the daemon prints; no sleeping
        if line.startswith("execgated: serving on "):
            daemon.target = line.removeprefix("execgated: serving on ").strip().split(", ")[0]
            break
    if not daemon.target:
        daemon.stop()
        said = log.read_text() if log is not None else "".join(daemon.stderr_lines)
        raise RuntimeError("execgated did not start:\n" + said)
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with the test policy, shared by a module's tests."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    """A client authenticated with the test API key."""
    with daemon.client() as c:
        yield c
