"""Attacks a command might try, and what the kernel sandbox does about each.

Commands here are allowed by the policy on purpose: the allowlist is not the boundary, the
kernel is. Tests that need a layer this host lacks are skipped with the reason; run as an
unprivileged user (as under systemd) the suite exercises the user-namespace path.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import Client, ExitReason, RPCError, RunResult
from tests.conftest import DOCTOR, HAS_CGROUP, Daemon, start_daemon, writable_by_commands

ROOT = os.geteuid() == 0

POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
  limits: {processes: 64, memory: 128MiB, open_files: 77, file_size: 5MiB, cpu_time: 30s}
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_execution_time: 20s
    kill_grace: 1s
    allowed_commands: [sh, cat, ls, id, python3, kill, touch, echo, sleep, "true", head]
  networked:
    type: command
    working_directory: ./workspace
    allowed_commands: [python3]
    sandbox: {network: true}
agents:
  dev:
    tools: [shell, networked]
server:
  auth:
    enabled: true
    api_keys: [{name: tester, key: "${TEST_API_KEY}"}]
logger: {level: info, format: json}
"""


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("sandboxed")
    d = start_daemon(root, POLICY, env={"DAEMON_SECRET": "hunter2-daemon-secret"})
    yield d
    d.stop()


@pytest.fixture
def c(sandboxed: Daemon) -> Iterator[Client]:
    with sandboxed.client() as client:
        yield client


def sh(c: Client, script: str, **kwargs: object) -> tuple[int, bytes, bytes]:
    r = c.run(["sh", "-c", script], agent="dev", tool="shell", **kwargs)  # type: ignore[arg-type]
    return r.exit_code, r.stdout, r.stderr


def test_a_write_outside_the_jail_fails_and_leaves_no_file(
        c: Client, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = writable_by_commands(tmp_path_factory.mktemp("outside"))
    os.chmod(outside, 0o777)  # only the sandbox stands in the way, not file permissions
    target = outside / "pwned"
    code, _, _ = sh(c, f"echo pwned > {target}")
    assert code != 0
    assert not target.exists()


def test_a_write_inside_the_jail_works(c: Client, sandboxed: Daemon) -> None:
    code, _, _ = sh(c, "echo kept > inside.txt")
    assert code == 0
    assert (sandboxed.workspace / "inside.txt").read_text() == "kept\n"


def test_tmp_is_private_to_the_job(c: Client) -> None:
    name = f"execgate-test-{uuid.uuid4().hex}"
    code, out, _ = sh(c, f'echo x > "$TMPDIR/{name}" && cat "$TMPDIR/{name}"')
    assert (code, out) == (0, b"x\n")
    assert not Path("/tmp", name).exists()
    assert sh(c, f'cat "$TMPDIR/{name}"')[0] != 0  # the next job does not see it


def test_the_daemons_config_cannot_be_read(c: Client, sandboxed: Daemon) -> None:
    code, out, _ = sh(c, f"cat {sandboxed.root / 'policy.yaml'}")
    assert code != 0
    assert b"api_keys" not in out


@pytest.mark.parametrize("path", ["/root", "/home", "/var/log"])
def test_private_directories_cannot_be_listed(c: Client, path: str) -> None:
    code, out, _ = sh(c, f"ls {path}")
    assert code != 0
    assert out == b""


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/hostname"])
def test_files_outside_the_read_paths_cannot_be_read(c: Client, path: str) -> None:
    code, out, _ = sh(c, f"cat {path}")
    assert code != 0
    assert out == b""


def test_the_daemons_environment_cannot_be_read_through_proc(c: Client,
                                                             sandboxed: Daemon) -> None:
    code, out, _ = sh(c, f"cat /proc/{sandboxed.proc.pid}/environ")
    assert code != 0
    assert b"hunter2" not in out


def test_the_job_sees_only_its_own_processes(c: Client) -> None:
    _, out, _ = sh(c, "ls /proc | grep -E '^[0-9]+$'")
    assert len(out.split()) <= 4  # init, sh, ls, grep


def test_the_daemon_cannot_be_signalled(c: Client, sandboxed: Daemon) -> None:
    code, _, _ = sh(c, f"kill -TERM {sandboxed.proc.pid}")
    assert code != 0
    assert sandboxed.proc.poll() is None


def _connect_from(c: Client, tool: str) -> RunResult:
    """A job of ``tool`` connects to a port this test listens on, on 127.0.0.1."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        return c.run(["python3", "-c", "import socket; socket.create_connection("
                                       f"('127.0.0.1', {port}), timeout=3)"],
                     agent="dev", tool=tool)


def test_connect_to_a_local_port_fails_without_network(c: Client) -> None:
    r = _connect_from(c, "shell")
    assert r.exit_code != 0
    assert b"Error" in r.stderr


def test_a_tool_with_network_can_connect(c: Client) -> None:
    assert _connect_from(c, "networked").exit_code == 0


def test_no_new_privs_and_the_limits_are_in_force(c: Client) -> None:
    _, status, _ = sh(c, "cat /proc/self/status")
    assert b"NoNewPrivs:\t1" in status
    _, limits, _ = sh(c, "cat /proc/self/limits")
    lines = {line[:26].strip(): line[26:].split() for line in limits.decode().splitlines()[1:]}
    assert lines["Max open files"][:2] == ["77", "77"]
    assert lines["Max core file size"][:2] == ["0", "0"]
    assert lines["Max file size"][:2] == [str(5 * 1024**2)] * 2
    assert lines["Max cpu time"][:2] == ["30", "30"]


def test_a_file_over_the_size_limit_cannot_be_written(c: Client) -> None:
    code, _, _ = sh(c, 'head -c 6000000 /dev/zero > "$TMPDIR/big"')
    assert code != 0


@pytest.mark.skipif(not ROOT, reason="run_as applies when the daemon runs as root")
def test_commands_run_as_nobody_not_root(c: Client) -> None:
    assert sh(c, "id -u")[1] == b"65534\n"


def test_accepted_reports_the_sandbox_and_limits(c: Client) -> None:
    plan = c.run(["true"], agent="dev", tool="shell").plan
    assert plan.sandbox is not None
    assert (plan.sandbox.filesystem, plan.sandbox.namespaces, plan.sandbox.network) == (
        True, True, False)
    assert plan.sandbox.cgroup is HAS_CGROUP
    assert (plan.open_files, plan.file_size_bytes, plan.cpu_time) == (77, 5 * 1024**2, 30.0)
    if HAS_CGROUP:
        assert (plan.processes, plan.memory_bytes) == (64, 128 * 1024**2)


@pytest.mark.skipif(not HAS_CGROUP, reason="this host gives no per-job cgroup")
def test_a_memory_hog_is_stopped_by_its_own_bound(c: Client, sandboxed: Daemon) -> None:
    r = c.run(["python3", "-c", "b = bytearray(512 * 2**20); print(len(b))"], agent="dev",
              tool="shell")
    assert r.reason is ExitReason.MEMORY_LIMIT
    assert sandboxed.proc.poll() is None


@pytest.mark.skipif(not HAS_CGROUP, reason="this host gives no per-job cgroup")
def test_a_fork_bomb_is_bounded_and_others_are_still_served(c: Client,
                                                            sandboxed: Daemon) -> None:
    result: dict[str, object] = {}

    def bomb() -> None:
        with sandboxed.client() as other:
            result["bomb"] = other.run(["sh", "-c", "b() { b | b & }; b; sleep 2"],
                                       agent="dev", tool="shell", timeout=4)

    thread = threading.Thread(target=bomb)
    thread.start()
    assert c.run(["echo", "still served"], agent="dev", tool="shell").stdout == b"still served\n"
    thread.join()
    bombed = result["bomb"]
    assert bombed.reason is ExitReason.PIDS_LIMIT  # type: ignore[attr-defined]
    assert sandboxed.proc.poll() is None


def test_a_required_layer_the_host_lacks_refuses_the_call(tmp_path: Path) -> None:
    """Fail closed: with cgroup required and unavailable, the call is refused naming it."""
    if HAS_CGROUP:
        pytest.skip("this host has cgroups: nothing is missing (the unprivileged run tests it)")
    d = start_daemon(tmp_path, POLICY, env={"CGROUP": "required"})
    try:
        with d.client() as client, pytest.raises(RPCError) as info:
            client.run(["true"], agent="dev", tool="shell")
        assert info.value.rule == "tools.shell.sandbox.cgroup"
        assert "required but unavailable" in info.value.message
    finally:
        d.stop()


def test_doctor_reports_each_layer() -> None:
    for layer in ("filesystem (Landlock ABI", "namespaces", "cgroup"):
        assert layer in DOCTOR


def test_doctor_fails_when_the_policy_requires_a_missing_layer(tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "p.yaml").write_text("sandbox: {cgroup: required}\ntools:\n"
                                     "  sh: {type: command, allowed_commands: [ls]}\n")
    result = subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "doctor", "--config",
                             str(tmp_path / "p.yaml")], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == (0 if HAS_CGROUP else 1)
    if not HAS_CGROUP:
        assert "every call to sh will be refused" in result.stdout


def test_a_killed_sandbox_helper_is_replaced_and_its_job_ends(tmp_path: Path) -> None:
    """One crash of the helper must not refuse every later call: the job it held ends with
    SANDBOX_ERROR (its whole namespace dies with the helper), and the next call runs."""
    import psutil

    d = start_daemon(tmp_path, POLICY)
    try:
        helpers = [p for p in psutil.Process(d.proc.pid).children()
                   if "execgate.daemon.sandbox._helper" in " ".join(p.cmdline())]
        assert len(helpers) == 1
        with d.client() as client:
            result: dict[str, object] = {}

            def long_job() -> None:
                result["run"] = client.run(["sh", "-c", "echo started; sleep 60"],
                                           agent="dev", tool="shell")

            thread = threading.Thread(target=long_job)
            thread.start()
            d.audit("run.started")
            helpers[0].kill()
            thread.join(timeout=30)
            assert result["run"].reason is ExitReason.SANDBOX_ERROR  # type: ignore[attr-defined]
            assert d.audit("sandbox.helper_restarted")
            assert sh(client, "echo again")[1] == b"again\n"
    finally:
        d.stop()
