"""The daemon's unix listener refuses its own jobs, whatever their uid.

An unprivileged daemon runs its jobs under its own uid, so SO_PEERCRED's uid alone would let
a job in as the operator. The socket here sits inside the tool's jail, where any view of the
filesystem a job gets still shows it, and the socket admits the jobs' uid: only the check
that tells a job from the operator stands between the job and the private agent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import Client
from execgate.daemon.unix import OwnJobs
from tests.conftest import NOBODY, Daemon, start_daemon, writable_by_commands

POLICY = """\
version: "2"
sandbox: {cgroup: ${CGROUP_LAYER}}
tools:
  shell:
    type: command
    working_directory: ${JAIL}
    allowed_commands: [python3]
    sandbox: {filesystem: "off", view: optional, network: true, namespaces: ${NAMESPACES}}
  private_shell:
    type: command
    working_directory: ${JAIL}
    allowed_commands: [echo]
agents:
  dev: {tools: [shell]}
  helper: {visibility: private, tools: [private_shell]}
server:
  unix_uids: ${UIDS}
  auth:
    enabled: true
    api_keys: [{name: tester, key: "${TEST_API_KEY}"}]
logger: {level: info, format: json}
"""

KNOCK = r"""
import os, socket, sys

def knock(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError as exc:
        return f"unreachable {exc.errno}"
    try:
        # The HTTP/2 client preface and an empty SETTINGS frame: a served peer gets the
        # server's SETTINGS back.
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        data = s.recv(100)
    except (BrokenPipeError, ConnectionResetError):
        data = b""
    return f"answered {len(data)}" if data else "closed"

if sys.argv[2] == "direct":
    print(knock(sys.argv[1]), flush=True)
    sys.exit(0)
# Double fork: the knocking process is an orphan in a session of its own, no longer a
# descendant of the command (with namespaces off it is re-parented out of the job's tree).
r, w = os.pipe()
child = os.fork()
if child == 0:
    if os.fork() == 0:
        os.setsid()
        os.close(r)
        os.write(w, knock(sys.argv[1]).encode())
        os._exit(0)
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
print(os.read(r, 200).decode(), flush=True)
"""

ROOT = os.geteuid() == 0


@pytest.fixture
def jail() -> Iterator[Path]:
    """A jail the jobs' user can reach (pytest's own tmp is private to the test's user)."""
    path = Path(tempfile.mkdtemp(prefix="execgate-own-socket-"))
    path.chmod(0o755)
    writable_by_commands(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


SANDBOXES = [pytest.param(("required", "optional"), id="namespaces"),
             pytest.param(("off", "optional"), id="no-namespaces"),
             pytest.param(("off", "off"), id="no-namespaces-no-cgroup")]
"""(namespaces, cgroup): with neither, a job shares the daemon's pid namespace and cgroup."""


def start(tmp_path: Path, jail: Path, sandbox: tuple[str, str]) -> Daemon:
    # As root, jobs run as nobody: admit nobody's uid, as an unprivileged daemon admits its
    # own (its jobs' uid) by default.
    uids = [os.geteuid(), NOBODY.pw_uid] if ROOT else [os.geteuid()]
    policy = (POLICY.replace("${JAIL}", str(jail)).replace("${NAMESPACES}", sandbox[0])
              .replace("${CGROUP_LAYER}", sandbox[1]).replace("${UIDS}", json.dumps(uids)))
    return start_daemon(tmp_path, policy, extra_args=("--listen", f"unix:{jail / 'eg.sock'}"))


def knock_from_a_job(d: Daemon, jail: Path, how: str) -> str:
    with d.client() as c:
        r = c.run(["python3", "-c", KNOCK, str(jail / "eg.sock"), how], agent="dev",
                  tool="shell")
    assert r.exit_code == 0, r.stderr
    return r.stdout.decode().strip()


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_job_connecting_to_the_daemons_socket_is_refused(
        tmp_path: Path, jail: Path, sandbox: tuple[str, str]) -> None:
    d = start(tmp_path, jail, sandbox)
    try:
        assert knock_from_a_job(d, jail, "direct") == "closed"
        refused = d.audit("unix.refused")
        assert refused and refused[0]["reason"].startswith("the peer is a job"), refused
    finally:
        d.stop()


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_double_forked_orphan_of_a_job_is_refused(
        tmp_path: Path, jail: Path, sandbox: tuple[str, str]) -> None:
    """Re-parented out of the job's process tree, in a session of its own, it still is one."""
    d = start(tmp_path, jail, sandbox)
    try:
        assert knock_from_a_job(d, jail, "orphan") == "closed"
        refused = d.audit("unix.refused")
        assert refused and refused[0]["reason"].startswith("the peer is a job"), refused
    finally:
        d.stop()


def test_the_operator_on_the_same_socket_is_served(tmp_path: Path, jail: Path) -> None:
    d = start(tmp_path, jail, ("required", "optional"))
    try:
        with Client(f"unix:{jail / 'eg.sock'}", token="") as c:
            assert "helper" in [a.name for a in c.agents()]
            assert c.run(["echo", "operator"], agent="helper").stdout == b"operator\n"
    finally:
        d.stop()


def test_a_peer_whose_pid_is_hidden_or_gone_is_refused() -> None:
    """Fail closed: SO_PEERCRED reports pid 0 for a peer outside the daemon's pid
    namespace, and a peer that has exited cannot be inspected."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    jobs = OwnJobs()
    assert "not visible" in (jobs.refusal(0) or "")
    assert "cannot be inspected" in (jobs.refusal(gone.pid) or "")
    assert jobs.refusal(os.getpid()) is None
