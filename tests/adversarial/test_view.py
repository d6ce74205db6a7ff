"""A job's own root: host unix sockets, the daemon's socket and the rest of the host are not
in a job's world; a swapped working directory is never entered; a killed daemon or helper
takes its jobs with it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from execgate.client import Client, ExitReason, OutputChunk
from tests.conftest import DOCTOR, Daemon, start_daemon, writable_by_commands

pytestmark = pytest.mark.skipif("ok    view" not in DOCTOR,
                                reason="this host cannot build a job's own root (see doctor)")

CONNECT = """\
import errno, socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "stream" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_UNIX, kind)
try:
    if kind == socket.SOCK_STREAM:
        s.connect(sys.argv[2]); s.sendall(b"hello")
    else:
        s.sendto(b"hello", sys.argv[2])
    print("reached")
except OSError as e:
    print("refused", errno.errorcode.get(e.errno, e.errno))
"""

SWAP = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
while not os.path.exists("stop"):
    libc.renameat2(-100, b"d", -100, b"l", RENAME_EXCHANGE)
print("swapped")
"""


def policy(named: str) -> str:
    return f"""\
version: "2"
sandbox:
  cgroup: ${{CGROUP:-required}}
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_execution_time: 60s
    allowed_commands: [sh, ls, python3, git, pwd, cat, sleep]
  networked:
    type: command
    working_directory: ./workspace
    allowed_commands: [python3]
    sandbox: {{network: true}}
  named:
    type: command
    working_directory: ./workspace
    allowed_commands: [python3]
    sandbox: {{unix_sockets: ["{named}"]}}
  loose:
    type: command
    working_directory: ./workspace
    allowed_commands: [sh, pwd, cat]
    sandbox: {{filesystem: off, view: off}}
agents:
  dev:
    tools: [shell, networked, named, loose]
server:
  auth:
    enabled: true
    api_keys: [{{name: tester, key: "${{TEST_API_KEY}}"}}]
logger: {{level: info, format: json}}
"""


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world-writable directory outside every jail, holding the test's sockets."""
    path = tmp_path_factory.mktemp("outside")
    os.chmod(path, 0o777)  # only the sandbox stands in the way, not file permissions
    return path


@pytest.fixture(scope="module")
def viewed(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("viewed")
    os.chmod(root, 0o755)
    d = start_daemon(root, policy(str(outside / "allowed")),
                     extra_args=("--listen", f"unix:{root / 'execgated.sock'}"))
    yield d
    d.stop()


@pytest.fixture
def c(viewed: Daemon) -> Iterator[Client]:
    with viewed.client() as client:
        yield client


def listening(path: Path, kind: int) -> socket.socket:
    """A socket bound at ``path`` that anyone may connect to."""
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(str(path))
    os.chmod(path, 0o777)
    if kind == socket.SOCK_STREAM:
        s.listen()
    s.setblocking(False)
    return s


def subdirectory(d: Daemon, prefix: str) -> Path:
    """A fresh directory in the jail that commands may write."""
    path = d.workspace / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return writable_by_commands(path)


def nothing_arrived(s: socket.socket) -> bool:
    """Whether no connection or datagram reached ``s`` (the job has exited by now)."""
    try:
        if s.type == socket.SOCK_STREAM:
            s.accept()[0].close()
        else:
            s.recv(16)
    except BlockingIOError:
        return True
    return False


def test_a_job_sees_no_host_runtime_or_home_directories(c: Client) -> None:
    """Landlock alone lets a job stat any path; in its view these do not exist at all."""
    probe = ("for p in /usr /proc /dev/null /tmp /run /var/run /var /home /root /srv /mnt "
             "/boot /etc/shadow /etc/machine-id; do [ -e $p ] && echo $p; done; true")
    r = c.run(["sh", "-c", probe], agent="dev", tool="shell")
    assert r.stdout.decode().split() == ["/usr", "/proc", "/dev/null", "/tmp"]
    assert r.plan.sandbox is not None and r.plan.sandbox.view


@pytest.mark.parametrize("tool", ["shell", "networked"])
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM],
                         ids=["stream", "datagram"])
def test_a_host_socket_outside_the_jail_is_unreachable(
        c: Client, outside: Path, tool: str, kind: int) -> None:
    path = outside / f"host-{tool}-{kind}.sock"
    s = listening(path, kind)
    try:
        name = "stream" if kind == socket.SOCK_STREAM else "dgram"
        r = c.run(["python3", "-c", CONNECT, name, str(path)], agent="dev", tool=tool)
        assert r.stdout.decode().split()[0] == "refused", r.stdout
        assert nothing_arrived(s)
    finally:
        s.close()


def test_a_named_socket_is_reachable_and_no_other(c: Client, outside: Path) -> None:
    allowed = listening(outside / "allowed", socket.SOCK_STREAM)
    other = listening(outside / "other", socket.SOCK_STREAM)
    try:
        r = c.run(["python3", "-c", CONNECT, "stream", str(outside / "allowed")],
                  agent="dev", tool="named")
        assert r.stdout == b"reached\n"
        conn, _ = allowed.accept()
        conn.setblocking(True)
        assert conn.recv(16) == b"hello"
        conn.close()
        r = c.run(["python3", "-c", CONNECT, "stream", str(outside / "other")],
                  agent="dev", tool="named")
        assert r.stdout.startswith(b"refused")
        assert nothing_arrived(other)
    finally:
        allowed.close()
        other.close()


def test_the_daemons_own_socket_is_not_in_a_jobs_view(c: Client, viewed: Daemon) -> None:
    path = viewed.root / "execgated.sock"
    assert path.exists()
    r = c.run(["python3", "-c", CONNECT, "stream", str(path)], agent="dev", tool="shell")
    assert r.stdout == b"refused ENOENT\n"


def test_socketpair_python_and_git_work_in_a_view(c: Client, viewed: Daemon) -> None:
    script = ("import socket; a, b = socket.socketpair(); a.sendall(b'pair'); "
              "print(b.recv(4).decode())")
    assert c.run(["python3", "-c", script], agent="dev", tool="shell").stdout == b"pair\n"
    repo = subdirectory(viewed, "repo")
    git = ("set -e; cd " + repo.name + "; git init -q .; echo x > f; git add f; "
           "git -c user.name=t -c user.email=t@t commit -qm m; git log --format=%s")
    r = c.run(["sh", "-c", git], agent="dev", tool="shell")
    assert (r.exit_code, r.stdout) == (0, b"m\n"), r.stderr


def test_pytest_runs_in_a_view(c: Client, viewed: Daemon) -> None:
    if not Path("/usr/lib/python3/dist-packages/pytest").exists():
        pytest.skip("the system python has no pytest (Debian's python3-pytest)")
    tests = subdirectory(viewed, "t")
    (tests / "test_x.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    r = c.run(["sh", "-c", f"cd {tests.name} && python3 -m pytest -q -p no:cacheprovider"],
              agent="dev", tool="shell")
    assert r.exit_code == 0 and b"1 passed" in r.stdout, r.stdout + r.stderr


def test_a_cwd_swapped_for_a_symlink_is_never_entered(
        c: Client, viewed: Daemon, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A job exchanges a directory and a symlink out of the jail while calls name the
    directory as their cwd (renameat2 RENAME_EXCHANGE); with Landlock and the view off,
    only the identity check stands between them and the other directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.chmod(elsewhere, 0o755)
    (elsewhere / "secret").write_text("other-jail-secret")
    os.chmod(elsewhere / "secret", 0o644)
    arena = subdirectory(viewed, "arena")
    (arena / "d").mkdir()
    writable_by_commands(arena / "d")
    (arena / "l").symlink_to(elsewhere)
    os.lchown(arena / "l", os.stat(arena).st_uid, os.stat(arena).st_gid)
    swapper = threading.Thread(target=lambda: c.run(
        ["sh", "-c", f"cd {arena.name} && python3 -c '{SWAP}'"], agent="dev", tool="shell"))
    swapper.start()
    outputs = []
    try:
        for _ in range(150):
            try:
                r = c.run(["sh", "-c", "pwd -P; cat secret 2>/dev/null; true"], agent="dev",
                          tool="loose", cwd=f"{arena.name}/d")
            except Exception as exc:  # a refusal by the policy (d was the symlink) is fine
                outputs.append(type(exc).__name__)
                continue
            outputs.append(r.reason.name)
            assert b"other-jail-secret" not in r.stdout
            if r.reason is ExitReason.EXITED:
                assert r.stdout.decode().startswith(str(arena.resolve())), r.stdout
    finally:
        (arena / "stop").touch()
        swapper.join(timeout=60)
    assert "EXITED" in outputs


def _job_processes(marker: str) -> list[psutil.Process]:
    """The job's shell (its $0 is ``marker``) and whatever it started."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if marker in (proc.info["cmdline"] or []):  # a fork of the shell, not yet exec'd, too
            found[proc.pid] = proc
            found.update((child.pid, child) for child in proc.children(recursive=True))
    return list(found.values())


def _start_sleeper(d: Daemon, marker: str) -> None:
    """A job that says it is running, then sleeps; returns once it has said so."""
    running = threading.Event()

    def call() -> None:
        try:
            with d.client() as client:
                for event in client.stream(["sh", "-c", "sleep 1000 & echo ready; wait", marker],
                                           agent="dev", tool="shell"):
                    if isinstance(event, OutputChunk):
                        running.set()
        except Exception:  # the daemon is killed under it: any error is expected
            running.set()

    threading.Thread(target=call, daemon=True).start()
    assert running.wait(timeout=30)


@pytest.mark.parametrize("victim", ["daemon", "helper"])
def test_a_sigkilled_daemon_or_helper_leaves_no_job_process(
        tmp_path: Path, victim: str) -> None:
    d = start_daemon(tmp_path, policy("/nonexistent"))
    try:
        marker = f"job-{uuid.uuid4().hex}"
        _start_sleeper(d, marker)
        job = _job_processes(marker)
        assert len(job) >= 2, "the job's shell and its sleep are running"
        target = d.proc.pid
        if victim == "helper":
            target = next(p.pid for p in psutil.Process(d.proc.pid).children()
                          if "execgate.daemon.sandbox._helper" in p.cmdline())
        os.kill(target, signal.SIGKILL)
        _, alive = psutil.wait_procs(job, timeout=5.0)
        assert not alive
    finally:
        d.stop()


def test_a_tool_with_fewer_read_paths_sees_fewer(tmp_path: Path) -> None:
    """Read paths the tool does not list are not in its view, symlinks (/bin) included."""
    text = policy("/nonexistent").replace(
        "  loose:\n", "  narrow:\n    type: command\n    working_directory: ./workspace\n"
        "    allowed_commands: [sh]\n    sandbox: {read_paths: [/usr, /lib, /lib64, /proc, "
        "/dev/null, /etc/ld.so.cache], filesystem: off}\n  loose:\n").replace(
        "tools: [shell, networked, named, loose]",
        "tools: [shell, networked, named, loose, narrow]")
    d = start_daemon(tmp_path, text)
    try:
        with d.client() as client:
            r = client.run(["sh", "-c", "for p in /usr /lib /bin /etc/passwd /etc/hosts; do "
                                        "[ -e $p ] && echo $p; done; true"],
                           agent="dev", tool="narrow")
        assert r.stdout.decode().split() == ["/usr", "/lib"], r.stderr
    finally:
        d.stop()
