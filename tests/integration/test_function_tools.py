"""Built-in file tools through a real daemon: confined to the tool's working directory."""

from __future__ import annotations

import os

import pytest

from execgate.client import Client, ExitReason, InvalidArgumentError, PolicyDeniedError
from tests.conftest import Daemon


def test_write_then_read_round_trips(client: Client) -> None:
    wrote = client.call("write_file", agent="dev", path="notes.txt", content="héllo\n")
    assert wrote.stdout == b"wrote 7 bytes to notes.txt\n"
    assert client.call("read_file", agent="dev", path="notes.txt").stdout == "héllo\n".encode()


def test_read_with_offset_and_limit(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "digits.txt").write_bytes(b"0123456789")
    result = client.call("read_file", agent="dev", path="digits.txt", offset="3", limit="4")
    assert result.stdout == b"3456"


def test_append_mode_appends(client: Client, daemon: Daemon) -> None:
    client.call("write_file", agent="dev", path="log.txt", content="a\n")
    client.call("write_file", agent="dev", path="log.txt", content="b\n", mode="append")
    assert (daemon.workspace / "log.txt").read_bytes() == b"a\nb\n"


def test_create_mode_refuses_an_existing_file(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "exists.txt").write_text("keep")
    result = client.call("write_file", agent="dev", path="exists.txt", content="x", mode="create")
    assert result.reason is ExitReason.TOOL_ERROR
    assert "already exists" in result.exit.message
    assert (daemon.workspace / "exists.txt").read_text() == "keep"


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../x"])
def test_paths_leaving_the_jail_are_denied(client: Client, path: str) -> None:
    with pytest.raises(PolicyDeniedError) as info:
        client.call("read_file", agent="dev", path=path)
    assert info.value.rule == "tools.read_file.working_directory"


def test_a_symlink_out_of_the_jail_is_not_followed(client: Client, daemon: Daemon,
                                                   tmp_path_factory: pytest.TempPathFactory,
                                                   ) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("secret")
    (daemon.workspace / "link.txt").symlink_to(outside)
    read = client.call("read_file", agent="dev", path="link.txt")
    assert read.reason is ExitReason.TOOL_ERROR and b"secret" not in read.stdout
    write = client.call("write_file", agent="dev", path="link.txt", content="pwned")
    assert write.reason is ExitReason.TOOL_ERROR
    assert outside.read_text() == "secret"


def test_a_symlinked_directory_out_of_the_jail_is_not_followed(
        client: Client, daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outdir")
    (daemon.workspace / "dirlink").symlink_to(outside)
    result = client.call("write_file", agent="dev", path="dirlink/new.txt", content="x")
    assert result.reason is ExitReason.TOOL_ERROR
    assert not (outside / "new.txt").exists()


def test_a_hard_link_to_an_outside_file_is_not_written(
        client: Client, daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("hard") / "target.txt"
    outside.write_text("original")
    try:
        os.link(outside, daemon.workspace / "hard.txt")
    except OSError:
        pytest.skip("hard links across these directories are not possible here")
    result = client.call("write_file", agent="dev", path="hard.txt", content="pwned")
    assert result.reason is ExitReason.TOOL_ERROR
    assert outside.read_text() == "original"


def test_a_fifo_is_refused_without_blocking(client: Client, daemon: Daemon) -> None:
    os.mkfifo(daemon.workspace / "pipe")
    result = client.call("read_file", agent="dev", path="pipe")
    assert result.reason is ExitReason.TOOL_ERROR
    assert "not a regular file" in result.exit.message


def test_a_read_over_the_size_limit_is_refused(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "big.bin").write_bytes(b"x" * (17 * 1024 * 1024))
    result = client.call("read_file", agent="dev", path="big.bin")
    assert result.reason is ExitReason.TOOL_ERROR
    assert "limit" in result.exit.message


def test_list_directory_marks_directories_and_links(client: Client, daemon: Daemon) -> None:
    d = daemon.workspace / "listing"
    (d / "sub").mkdir(parents=True)
    (d / "file").write_text("x")
    (d / "ln").symlink_to("file")
    assert client.call("list_directory", agent="dev", path="listing").stdout == b"file\nln@\nsub/\n"


def test_grep_search_finds_matches_with_line_numbers(client: Client, daemon: Daemon) -> None:
    d = daemon.workspace / "grep"
    d.mkdir()
    (d / "a.txt").write_text("alpha\nbeta\ngamma\n")
    result = client.call("grep_search", agent="dev", pattern="^b", path="grep")
    assert result.stdout == b"grep/a.txt:2:beta\n"


def test_grep_search_does_not_follow_a_symlink_out(client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "etc-link").symlink_to("/etc")
    with pytest.raises(PolicyDeniedError):
        client.call("grep_search", agent="dev", pattern="root", path="etc-link")


def test_unknown_argument_is_invalid_and_lists_the_accepted_ones(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="takes: limit, offset, path"):
        client.call("read_file", agent="dev", path="x", mode="fast")


def test_missing_argument_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="needs argument"):
        client.call("write_file", agent="dev", path="x")
