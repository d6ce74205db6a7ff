"""Paths from requests are resolved beneath the jail: every bad one is refused by rule.

The workspace's links are planted by the test, as a job running in the jail could plant them.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from execgate.client import (
    Client,
    ExitReason,
    InvalidArgumentError,
    PermissionDeniedError,
    RPCError,
)
from tests.conftest import Daemon

RULE = "tools.shell.working_directory"
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory beside the jail with a secret in it."""
    directory = tmp_path_factory.mktemp("elsewhere")
    (directory / "secret.txt").write_text("another jail's secret")
    return directory


def _refused_cwd(client: Client, cwd: str) -> RPCError:
    with pytest.raises(RPCError) as info:
        client.run(["cat", "secret.txt"], agent="dev", cwd=cwd)
    assert info.value.status in REFUSED
    assert info.value.rule == RULE
    return info.value


def test_a_symlink_loop_then_dotdot_does_not_lead_out(client: Client, daemon: Daemon,
                                                      outside: Path) -> None:
    """``loop1/../out``: resolve() stops at the loop and collapses ``..`` by string."""
    ws = daemon.workspace
    (ws / "loop1").symlink_to("loop2")
    (ws / "loop2").symlink_to("loop1")
    (ws / "out").symlink_to(outside)
    error = _refused_cwd(client, "loop1/../out")
    assert "secret" not in error.message


def test_a_symlink_loop_cwd_is_refused_by_rule_and_audited(client: Client,
                                                           daemon: Daemon) -> None:
    (daemon.workspace / "selfloop").symlink_to("selfloop")
    _refused_cwd(client, "selfloop")
    assert daemon.audit("call.denied", cwd="selfloop", rule=RULE)


def test_a_cwd_through_proc_is_refused(client: Client, daemon: Daemon) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        client.run(["ls"], agent="dev", cwd="/proc/1/root/etc")
    assert info.value.rule == RULE
    assert daemon.audit("call.denied", cwd="/proc/1/root/etc", rule=RULE)


def test_a_cwd_component_over_255_bytes_is_invalid(client: Client, daemon: Daemon) -> None:
    cwd = "a" * 300
    with pytest.raises(InvalidArgumentError) as info:
        client.run(["ls"], agent="dev", cwd=cwd)
    assert info.value.rule == RULE
    assert daemon.audit("call.denied", cwd=cwd, rule=RULE)


def test_an_absolute_symlink_cwd_is_refused_even_back_into_the_jail(
        client: Client, daemon: Daemon) -> None:
    """An absolute link leaves the jail's root, wherever it points."""
    (daemon.workspace / "inside").mkdir()
    (daemon.workspace / "abs-link").symlink_to(daemon.workspace / "inside")
    with pytest.raises(PermissionDeniedError) as info:
        client.run(["ls"], agent="dev", cwd="abs-link")
    assert info.value.rule == RULE


def test_a_symlink_that_stays_in_the_jail_is_followed_and_reported_real(
        client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "releases" / "v2").mkdir(parents=True)
    (daemon.workspace / "current").symlink_to("releases/v2")
    result = client.run(["pwd"], agent="dev", cwd="current")
    real = (daemon.workspace / "releases" / "v2").resolve()
    assert result.exit_code == 0
    assert result.plan.cwd == str(real)


def test_an_error_for_an_outside_path_names_only_the_given_path(client: Client,
                                                                outside: Path) -> None:
    error = _refused_cwd(client, str(outside))
    assert error.message.count(str(outside)) == 1  # the caller's words, nothing resolved


@pytest.mark.parametrize("offset", [str(2**63), str(2**64), "9" * 5000])
def test_a_read_offset_beyond_what_the_kernel_takes_is_invalid(client: Client, daemon: Daemon,
                                                               offset: str) -> None:
    (daemon.workspace / "small.txt").write_text("small")
    with pytest.raises(InvalidArgumentError, match="offset"):
        client.call("read_file", agent="dev", path="small.txt", offset=offset)


@pytest.mark.parametrize("limit", [str(2**63), "9" * 5000])
def test_a_read_limit_beyond_what_the_kernel_takes_is_invalid(client: Client, daemon: Daemon,
                                                              limit: str) -> None:
    (daemon.workspace / "small.txt").write_text("small")
    with pytest.raises(InvalidArgumentError, match="limit"):
        client.call("read_file", agent="dev", path="small.txt", limit=limit)


def test_a_read_offset_past_the_end_returns_nothing(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "small.txt").write_text("small")
    result = client.call("read_file", agent="dev", path="small.txt", offset=str(2**63 - 1))
    assert result.reason is ExitReason.EXITED and result.stdout == b""


def test_grep_search_on_a_fifo_is_refused_at_once(client: Client, daemon: Daemon) -> None:
    """grep would block on the FIFO until the tool's deadline."""
    os.mkfifo(daemon.workspace / "grep-fifo")
    with pytest.raises(InvalidArgumentError, match="not a regular file or directory") as info:
        client.call("grep_search", agent="dev", pattern="x", path="grep-fifo", timeout=600)
    assert info.value.rule == "tools.grep_search.working_directory"


def test_grep_search_through_a_symlink_loop_is_refused_by_rule(client: Client,
                                                               daemon: Daemon) -> None:
    (daemon.workspace / "greploop").symlink_to("greploop")
    with pytest.raises(RPCError) as info:
        client.call("grep_search", agent="dev", pattern="x", path="greploop")
    assert info.value.status in REFUSED
    assert info.value.rule == "tools.grep_search.working_directory"
    assert daemon.audit("call.denied", tool="grep_search",
                        rule="tools.grep_search.working_directory")


def test_grep_search_follows_a_symlink_inside_the_jail(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "grep-real").mkdir()
    (daemon.workspace / "grep-real" / "a.txt").write_text("needle\n")
    (daemon.workspace / "grep-link").symlink_to("grep-real")
    result = client.call("grep_search", agent="dev", pattern="needle", path="grep-link")
    assert result.stdout == b"grep-real/a.txt:1:needle\n"


def test_file_tools_do_not_follow_a_directory_swapped_for_an_outside_symlink(
        client: Client, daemon: Daemon, outside: Path) -> None:
    """The path checked at plan time is re-resolved beneath the jail when the tool runs."""
    swapped = daemon.workspace / "swapped"
    swapped.mkdir()
    (swapped / "secret.txt").write_text("inside")
    swapped.rename(daemon.workspace / "swapped-away")
    swapped.symlink_to(outside)
    read = client.call("read_file", agent="dev", path="swapped/secret.txt")
    assert read.reason is ExitReason.TOOL_ERROR and read.stdout == b""
    assert "outside" in read.exit.message
    write = client.call("write_file", agent="dev", path="swapped/new.txt", content="x")
    assert write.reason is ExitReason.TOOL_ERROR
    listing = client.call("list_directory", agent="dev", path="swapped")
    assert listing.reason is ExitReason.TOOL_ERROR
    assert not (outside / "new.txt").exists()


def test_file_tools_follow_a_symlink_that_stays_in_the_jail(client: Client,
                                                            daemon: Daemon) -> None:
    (daemon.workspace / "docs").mkdir()
    (daemon.workspace / "docs" / "readme.txt").write_text("hello")
    (daemon.workspace / "docs-link").symlink_to("docs")
    assert client.call("read_file", agent="dev", path="docs-link/readme.txt").stdout == b"hello"


def test_no_path_error_carries_the_hosts_path(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "leak-loop").symlink_to("leak-loop")
    error = _refused_cwd(client, "leak-loop")
    assert str(daemon.root) not in error.message


def test_a_refusal_does_not_reveal_whether_an_outside_path_exists(client: Client,
                                                                  daemon: Daemon) -> None:
    (daemon.workspace / "to-existing").symlink_to("/etc")
    (daemon.workspace / "to-missing").symlink_to("/nonexistent-execgate-test")
    existing = _refused_cwd(client, "to-existing")
    missing = _refused_cwd(client, "to-missing")
    assert existing.message.replace("to-existing", "X") == missing.message.replace(
        "to-missing", "X")
