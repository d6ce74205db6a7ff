"""Unix socket listeners: callers known by their uid (SO_PEERCRED), and the guide's private
agents, callable only there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from execgate.client import Client, NotFoundError, UnavailableError
from tests.conftest import Daemon, start_daemon

POLICY = """\
version: "2"
tools:
  shell: {type: command, allowed_commands: [echo]}
agents:
  dev: {tools: [shell]}
  helper: {visibility: private, tools: [shell]}
server:
  unix_uids: ${UIDS}
  auth:
    enabled: true
    api_keys: [{name: ci, key: "${TEST_API_KEY}"}]
sandbox: {cgroup: optional}
logger: {level: info, format: json}
"""


def start(root: Path, uids: list[int], sock: Path | None = None) -> tuple[Daemon, str]:
    sock = sock or root / "execgate.sock"
    d = start_daemon(root, POLICY.replace("${UIDS}", json.dumps(uids)),
                     extra_args=("--listen", f"unix:{sock}"))
    return d, f"unix:{sock}"


def test_a_unix_caller_is_its_uid_and_reaches_private_agents(tmp_path: Path) -> None:
    d, target = start(tmp_path, [os.geteuid()])
    try:
        with Client(target, token="") as c:
            run_id = c.run(["echo", "local"], agent="helper").run_id
            assert [a.name for a in c.agents()] == ["dev", "helper"]
        started = d.audit("run.started", run_id=run_id)[0]
        assert (started["subject"], started["auth"]) == (f"uid:{os.geteuid()}", "unix")
    finally:
        d.stop()


def test_private_agents_are_neither_listed_nor_callable_over_tcp(tmp_path: Path) -> None:
    d, _ = start(tmp_path, [os.geteuid()])
    try:
        with d.client() as c:  # TCP, with a valid API key
            assert "helper" not in [a.name for a in c.agents()]
            with pytest.raises(NotFoundError):
                c.run(["echo", "x"], agent="helper")
    finally:
        d.stop()


def test_a_uid_not_allowed_is_refused(tmp_path: Path) -> None:
    d, target = start(tmp_path, [os.geteuid() + 4242])
    try:
        with Client(target, token="") as c, pytest.raises(UnavailableError):
            c.run(["echo", "x"], agent="helper")
        assert d.audit("unix.refused", uid=os.geteuid())
    finally:
        d.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_another_users_connection_is_closed_unless_allowed(tmp_path: Path) -> None:
    public = Path(tempfile.mkdtemp(prefix="execgate-sock-"))
    public.chmod(0o755)  # so that nobody can reach the socket and be judged by its uid
    d, target = start(tmp_path, [0, 4242], public / "execgate.sock")
    try:
        code = "\n".join((
            "import os, socket, sys",
            "os.setgid(65534)",
            "os.setuid(65534)",
            "s = socket.socket(socket.AF_UNIX)",
            "s.connect(sys.argv[1])",
            "try:",
            "    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')",
            "    print(len(s.recv(100)))",
            "except (BrokenPipeError, ConnectionResetError):",  # closed before or while writing
            "    print(0)"))
        result = subprocess.run([sys.executable, "-c", code, target.removeprefix("unix:")],
                                capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == "0", result.stderr  # closed without a byte of HTTP/2
        assert d.audit("unix.refused", uid=65534)
    finally:
        d.stop()
        shutil.rmtree(public, ignore_errors=True)


def test_the_relays_internal_listener_admits_nothing_else(tmp_path: Path) -> None:
    d, _ = start(tmp_path, [os.geteuid()])
    try:
        internal = d.audit("unix.relay")[0]["internal"]  # the daemon is not dumpable
        with Client(internal, token="test-key-0123456789") as c, \
                pytest.raises(Exception, match="unix socket relay only"):
            c.run(["echo", "x"], agent="dev")
    finally:
        d.stop()


def test_the_socket_file_admits_only_the_daemons_user_by_default(tmp_path: Path) -> None:
    d, target = start(tmp_path, [os.geteuid()])
    try:
        assert os.stat(target.removeprefix("unix:")).st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(target.removeprefix("unix:"))
    finally:
        d.stop()
