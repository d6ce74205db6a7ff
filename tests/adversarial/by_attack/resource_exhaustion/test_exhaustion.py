"""Resource exhaustion: a job that tries to take more than its share. Each ends with the
reason that names its limit, its processes gone, and the daemon still serving others.
(A minute of sustained mixed load is tests/soak/test_soak.py.)"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil
import pytest

from execgate.client import ExecgateError, ExitReason
from tests.adversarial.by_attack._outside import processes_with, sleep_marker
from tests.conftest import Daemon


def _gone(marker: str) -> bool:
    left = []
    for pid in processes_with(marker):
        with contextlib.suppress(psutil.NoSuchProcess):
            left.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(left, timeout=10)
    return not alive


def _still_serving(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.run(["echo", "ok"], agent="dev", tool="shell").stdout == b"ok\n"


def test_an_output_flood_is_cut_at_the_output_limit(daemon: Daemon) -> None:
    """`yes`: the simplest way to fill a caller's memory and the daemon's."""
    with daemon.client() as c:
        r = c.run(["yes", "flood"], agent="dev", tool="shell")
    assert r.reason is ExitReason.OUTPUT_LIMIT
    assert r.exit.stdout_bytes + r.exit.stderr_bytes <= 1024 * 1024
    _still_serving(daemon)


def test_a_command_that_never_ends_is_stopped_at_its_deadline(daemon: Daemon) -> None:
    """An agent told to `sleep infinity` (or to wait on a prompt) holds a slot for ever."""
    marker = sleep_marker()
    with daemon.client() as c:
        r = c.run(["sleep", marker], agent="dev", tool="shell", timeout=1)
    assert r.reason is ExitReason.TIMEOUT
    assert _gone(marker)


def test_a_command_ignoring_sigterm_is_killed_after_its_grace(daemon: Daemon) -> None:
    """`trap '' TERM`: a polite stop is not enough."""
    marker = sleep_marker()
    with daemon.client() as c:
        r = c.run(["sh", "-c", f"trap '' TERM; sleep {marker}; sleep {marker}"], agent="dev",
                  tool="shell", timeout=1)
    assert r.reason is ExitReason.TIMEOUT
    assert _gone(marker)


def test_a_file_descriptor_hog_runs_into_its_limit(daemon: Daemon) -> None:
    """Opening files until the host runs out (fs.file-max exhaustion)."""
    code = ("import os\nn = 0\ntry:\n    while True:\n        os.open('/dev/null', os.O_RDONLY)"
            "\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)")
    with daemon.client() as c:
        r = c.run(["python3", "-c", code], agent="dev", tool="shell")
    opened, errno = (int(x) for x in r.stdout.split())
    assert errno == 24  # EMFILE: its own limit, not the host's ENFILE
    assert opened <= 1024
    _still_serving(daemon)


def test_filling_tmp_stops_at_its_size_and_spares_the_hosts(daemon: Daemon) -> None:
    """Filling /tmp to break the host (disk exhaustion via a shared tmp)."""
    before = psutil.disk_usage("/tmp").used
    code = ("f = open('/tmp/fill', 'wb')\nn = 0\ntry:\n    while True:\n"
            "        f.write(b'x' * 1048576); f.flush(); n += 1\nexcept OSError as e:\n"
            "    print(n, e.errno)")
    with daemon.client() as c:
        r = c.run(["python3", "-c", code], agent="dev", tool="shell", timeout=15)
    written, _ = (int(x) for x in r.stdout.split())
    assert written <= 1024  # MiB: bounded by the job's private /tmp, or its file size limit
    assert psutil.disk_usage("/tmp").used - before < 512 * 1024 * 1024


def test_an_oversized_write_file_is_refused_and_writes_nothing(daemon: Daemon) -> None:
    """A function tool asked to write past max_file_bytes (disk filling through the API)."""
    with daemon.client() as c:
        try:
            r = c.call("write_file", agent="dev", path="huge.bin", content="x" * (2 * 1024**2))
        except ExecgateError:
            pass
        else:
            assert r.exit_code != 0
    assert not (daemon.workspace / "huge.bin").exists() or (
        (daemon.workspace / "huge.bin").stat().st_size <= 1024 * 1024)


@pytest.mark.parametrize("argv", [["sh", "-c", "cat /dev/zero | head -c 3000000"],
                                  ["head", "-c", "3000000", "/dev/urandom"]])
def test_a_binary_flood_is_cut_at_the_output_limit(daemon: Daemon, argv: list[str]) -> None:
    """Binary output (no newlines to buffer on) past the limit."""
    with daemon.client() as c:
        r = c.run(argv, agent="dev", tool="shell")
    assert r.reason is ExitReason.OUTPUT_LIMIT
    assert len(r.stdout) <= 1024 * 1024
    assert Path("/dev/zero").exists()
