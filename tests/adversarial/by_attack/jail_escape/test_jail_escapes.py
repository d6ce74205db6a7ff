"""Jail escape: reaching files outside a tool's working directory, through the file tools
or from inside a command. Each ends in a refusal with its rule, or in a run that could not
touch a world-writable canary outside the jail."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from execgate.client import ExecgateError, ExitReason, PolicyDeniedError
from tests.adversarial.by_attack._outside import Canary
from tests.conftest import Daemon, start_daemon

POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
tools:
  shell:
    type: command
    working_directory: ./workspace
    allowed_commands: [python3, sh, ln, cat]
  read_file: {type: function, working_directory: ./workspace}
  write_file: {type: function, working_directory: ./workspace}
  list_directory: {type: function, working_directory: ./workspace}
  grep_search: {type: function, working_directory: ./workspace}
agents:
  dev:
    tools: [shell, read_file, write_file, list_directory, grep_search]
server:
  auth:
    enabled: true
    api_keys:
      - {name: tester, key: "${TEST_API_KEY}"}
logger: {level: info, format: json}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("jail-escape"), POLICY)
    yield d
    d.stop()


@pytest.fixture
def canary() -> Iterator[Canary]:
    planted = Canary.plant()
    yield planted
    planted.remove()


def _refused(daemon: Daemon, tool: str, **arguments: str) -> PolicyDeniedError:
    with daemon.client() as c, pytest.raises(PolicyDeniedError) as refused:
        c.call(tool, agent="dev", **arguments)
    return refused.value


def _kept_in(daemon: Daemon, tool: str, **arguments: str) -> None:
    """Refused by rule before it runs, or stopped by the tool's resolver when it does (a
    link is only seen when the path is opened): either way, named as leading outside."""
    with daemon.client() as c:
        try:
            r = c.call(tool, agent="dev", **arguments)
        except PolicyDeniedError as refused:
            rule = refused.rule
        else:
            assert r.reason is ExitReason.TOOL_ERROR
            assert "outside the tool's working directory" in r.exit.message
            return
    assert rule.startswith(f"tools.{tool}.")


def _run(daemon: Daemon, argv: list[str]) -> None:
    with daemon.client() as c, contextlib.suppress(ExecgateError):
        c.run(argv, agent="dev", tool="shell", timeout=15)


def test_write_file_with_dotdot_is_refused(daemon: Daemon, canary: Canary) -> None:
    """The path traversal of CWE-22, the first thing tried against any agent file tool."""
    rel = os.path.relpath(canary.path, daemon.workspace)
    assert _refused(daemon, "write_file", path=rel, content="owned").rule.startswith(
        "tools.write_file.")
    assert canary.untouched()


def test_write_file_to_an_absolute_host_path_is_refused(daemon: Daemon, canary: Canary) -> None:
    """An absolute path where a relative one is expected (MCP filesystem server
    path-validation bypasses, CVE-2025-53110)."""
    assert _refused(daemon, "write_file", path=str(canary.path), content="owned")
    assert canary.untouched()


def test_write_file_through_a_planted_symlink_is_refused(daemon: Daemon,
                                                        canary: Canary) -> None:
    """A symlink inside the workspace pointing out (MCP filesystem server symlink escape,
    CVE-2025-53109)."""
    (daemon.workspace / "planted-link").symlink_to(canary.path)
    try:
        _kept_in(daemon, "write_file", path="planted-link", content="owned")
    finally:
        (daemon.workspace / "planted-link").unlink()
    assert canary.untouched()


def test_read_file_through_a_symlink_a_job_made_is_refused(daemon: Daemon,
                                                           canary: Canary) -> None:
    """The two-step escape reported against coding agents: a command plants a symlink to a
    secret, then the file tool is asked to read it."""
    _run(daemon, ["ln", "-sf", str(canary.path), "job-link"])
    assert (daemon.workspace / "job-link").is_symlink()
    _kept_in(daemon, "read_file", path="job-link")


def test_list_directory_of_the_parent_is_refused(daemon: Daemon) -> None:
    """Directory listing outside the workspace: reconnaissance before an escape."""
    assert _refused(daemon, "list_directory", path="..").rule.startswith(
        "tools.list_directory.")


def test_grep_search_through_proc_self_root_is_refused(daemon: Daemon) -> None:
    """/proc/self/root: the magic link back to the host's root."""
    (daemon.workspace / "proc-link").symlink_to("/proc/self/root")
    try:
        with daemon.client() as c, pytest.raises(ExecgateError):
            c.call("grep_search", agent="dev", pattern="root", path="proc-link/etc")
    finally:
        (daemon.workspace / "proc-link").unlink()


def test_a_job_writing_a_host_file_through_proc_1_root_fails(daemon: Daemon,
                                                             canary: Canary) -> None:
    """Container escapes through /proc/<pid>/root (e.g. the runc /proc/self/exe class)."""
    _run(daemon, ["python3", "-c", f"open('/proc/1/root{canary.path}', 'w').write('owned')"])
    assert canary.untouched()


def test_a_job_renaming_a_host_file_fails(daemon: Daemon, canary: Canary) -> None:
    """rename(2) out of a world-writable directory needs no permission on the file."""
    _run(daemon, ["python3", "-c", f"import os; os.rename({str(canary.path)!r}, 'stolen')"])
    assert canary.untouched()
    assert not (daemon.workspace / "stolen").exists()


def test_a_job_hard_linking_a_host_file_into_the_jail_fails(daemon: Daemon,
                                                             canary: Canary) -> None:
    """A hard link gives a path inside the jail to an inode outside it (Landlock's REFER
    right exists for this)."""
    _run(daemon, ["python3", "-c", f"import os; os.link({str(canary.path)!r}, 'hard')"])
    assert not (daemon.workspace / "hard").exists()
    assert canary.path.stat().st_nlink == 1


def test_a_job_symlink_then_write_through_it_fails(daemon: Daemon, canary: Canary) -> None:
    """Inside the job the link is made and followed by the same process."""
    _run(daemon, ["sh", "-c", f"ln -sf {canary.path} l2 && echo owned > l2"])
    assert canary.untouched()


def test_a_job_opening_by_handle_fails(daemon: Daemon, canary: Canary) -> None:
    """open_by_handle_at(2), the Shocker container escape: needs CAP_DAC_READ_SEARCH."""
    code = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
            "fd = libc.open_by_handle_at(-100, ctypes.c_char_p(b'\\0' * 16), 2); "
            "raise SystemExit(0 if fd < 0 else 1)")
    with daemon.client() as c:
        assert c.run(["python3", "-c", code], agent="dev", tool="shell").exit_code == 0
    assert canary.untouched()
