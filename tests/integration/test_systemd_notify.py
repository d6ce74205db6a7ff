"""The daemon speaks sd_notify itself: the test plays the service manager on a datagram
socket of its own (an abstract one, as systemd's is)."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Daemon, start_daemon

WATCHDOG_USEC = 400_000
"""Pings every 0.2 s: several arrive while a test waits for something else."""


class Manager:
    """The service manager's end of $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.address = f"@execgate-test-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.settimeout(30)  # a bound on a broken daemon, not a wait for an event

    def next(self) -> dict[str, str]:
        """The next message, as its KEY=VALUE lines."""
        data = self._sock.recv(4096).decode()
        return dict(line.partition("=")[::2] for line in data.splitlines())

    def until(self, line: str) -> dict[str, str]:
        """Messages up to the first carrying ``line`` (KEY=VALUE); that one."""
        key, _, value = line.partition("=")
        while (message := self.next()).get(key) != value:
            pass
        return message

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def manager() -> Iterator[Manager]:
    m = Manager()
    yield m
    m.close()


def _start(tmp_path: Path, manager: Manager) -> Daemon:
    return start_daemon(tmp_path, env={"NOTIFY_SOCKET": manager.address,
                                       "WATCHDOG_USEC": str(WATCHDOG_USEC)})


def _helper(d: Daemon) -> psutil.Process:
    """The sandbox helper: the daemon's child running execgate.daemon.sandbox._helper."""
    found = [p for p in psutil.Process(d.proc.pid).children()
             if any("execgate.daemon.sandbox._helper" in a for a in p.cmdline())]
    assert len(found) == 1
    return found[0]


def test_ready_comes_once_serving_with_the_addresses_as_status(tmp_path: Path,
                                                               manager: Manager) -> None:
    d = _start(tmp_path, manager)
    try:
        ready = manager.until("READY=1")
        assert ready["STATUS"].startswith("serving on ")
        assert d.target in ready["STATUS"]
    finally:
        d.stop()


def test_watchdog_pings_while_the_helper_answers(tmp_path: Path, manager: Manager) -> None:
    d = _start(tmp_path, manager)
    try:
        manager.until("WATCHDOG=1")
        manager.until("WATCHDOG=1")
    finally:
        d.stop()


def test_watchdog_stops_while_the_helper_is_frozen(tmp_path: Path, manager: Manager) -> None:
    """A wedged helper must get the service restarted: no ping while it does not answer."""
    d = _start(tmp_path, manager)
    helper = _helper(d)
    try:
        manager.until("READY=1")
        helper.suspend()
        assert d.audit("sandbox.helper_unanswered", missed=3)
        helper.resume()
        message = manager.next()
        while "not answering" not in message.get("STATUS", ""):
            message = manager.next()
        while (message := manager.next()).get("STATUS", "").find("not answering") >= 0:
            pass  # one STATUS per ping missed
        assert "WATCHDOG" not in message  # the thaw is announced before pings resume
        assert message["STATUS"].startswith("serving on ")
        manager.until("WATCHDOG=1")
    finally:
        if helper.is_running():
            helper.resume()
        d.stop()


def test_sighup_sends_reloading_on_the_monotonic_clock_then_ready(tmp_path: Path,
                                                                 manager: Manager) -> None:
    d = _start(tmp_path, manager)
    try:
        manager.until("READY=1")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.proc.send_signal(signal.SIGHUP)
        reloading = manager.until("RELOADING=1")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        assert "reloading" in reloading["STATUS"]
        assert manager.until("READY=1")["STATUS"].startswith("serving on ")
    finally:
        d.stop()


def test_sigterm_sends_stopping(tmp_path: Path, manager: Manager) -> None:
    d = _start(tmp_path, manager)
    manager.until("READY=1")
    d.proc.send_signal(signal.SIGTERM)
    assert "draining" in manager.until("STOPPING=1")["STATUS"]
    assert d.proc.wait(timeout=30) == 0
    d.stop()


def test_jobs_do_not_inherit_the_notify_socket(tmp_path: Path, manager: Manager) -> None:
    """Nothing but the daemon may speak for the service."""
    d = _start(tmp_path, manager)
    try:
        with d.client() as client:
            result = client.run(["env"], agent="dev")
        assert result.exit_code == 0
        assert b"NOTIFY_SOCKET" not in result.stdout
        assert b"WATCHDOG" not in result.stdout
        assert "NOTIFY_SOCKET" not in _helper(d).environ()
    finally:
        d.stop()

