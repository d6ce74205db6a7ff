"""Socket activation: the daemon serves on unix sockets the service manager opened
(LISTEN_FDS), and knows their callers by uid as on its own."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import Client
from tests.conftest import TEST_POLICY, Daemon, start_daemon

# What systemd does between fork and exec: the sockets from fd 3 on, and LISTEN_PID naming
# the process that will be the daemon.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="execgated")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _activated(root: Path, sock: socket.socket, policy: str = TEST_POLICY) -> Daemon:
    return start_daemon(root, policy, wrapper=(sys.executable, "-c", ACTIVATE,
                                               str(sock.fileno())),
                        pass_fds=(sock.fileno(),))


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening unix socket, as systemd opens one for ListenStream=PATH."""
    path = tmp_path / "execgated.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    yield sock, f"unix:{path}"
    sock.close()


def test_an_inherited_unix_socket_is_served_and_knows_its_peer_by_uid(
        tmp_path: Path, unix_socket: tuple[socket.socket, str]) -> None:
    sock, target = unix_socket
    d = _activated(tmp_path, sock)
    try:
        assert d.target == target  # listed first: the manager's socket is the main one
        with Client(target, token="") as client:
            assert "helper" in [a.name for a in client.agents()]  # private: local callers only
            run_id = client.run(["true"], agent="helper").run_id
        started = d.audit("run.started", run_id=run_id)[0]
        assert (started["subject"], started["auth"]) == (f"uid:{os.geteuid()}", "unix")
    finally:
        d.stop()


def test_listen_flags_add_to_the_inherited_sockets(
        tmp_path: Path, unix_socket: tuple[socket.socket, str]) -> None:
    sock, target = unix_socket
    d = _activated(tmp_path, sock)
    try:
        def serving() -> list[str]:
            return [line for line in d.stderr_lines if '"event": "serving"' in line]

        with d.said:
            d.said.wait_for(serving, timeout=30)
        assert serving() and target in serving()[0] and "127.0.0.1:" in serving()[0]
    finally:
        d.stop()


def test_jobs_do_not_inherit_the_activation_variables(
        tmp_path: Path, unix_socket: tuple[socket.socket, str]) -> None:
    sock, target = unix_socket
    d = _activated(tmp_path, sock)
    try:
        with Client(target, token="") as client:
            result = client.run(["env"], agent="helper")
        assert b"LISTEN_" not in result.stdout
    finally:
        d.stop()


def test_an_inherited_tcp_socket_is_refused_at_start(tmp_path: Path) -> None:
    """grpc cannot serve it: the daemon says where TCP is configured instead."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        with pytest.raises(RuntimeError, match=r"adopts unix sockets only.*server\.listen"):
            _activated(tmp_path, sock)
    finally:
        sock.close()
