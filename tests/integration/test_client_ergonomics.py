"""The client as agent code expects it from subprocess: check, text, argv as a list, and a
rate limit that says when to retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import (
    AsyncClient,
    Client,
    CommandFailedError,
    ExitReason,
    RateLimitedError,
)
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon


def test_check_raises_command_failed_with_the_result(client: Client) -> None:
    with pytest.raises(CommandFailedError) as failed:
        client.run(["sh", "-c", "echo oops >&2; exit 3"], agent="dev", check=True)
    assert failed.value.result.exit_code == 3
    assert failed.value.result.stderr == b"oops\n"
    assert "exit status 3" in str(failed.value)


def test_check_passes_a_command_that_exits_zero(client: Client) -> None:
    assert client.run(["true"], agent="dev", check=True).ok


def test_text_gives_str_output(client: Client) -> None:
    result = client.run(["printf", "h\\303\\251"], agent="dev", text=True)
    assert result.stdout == "hé"


def test_an_encoding_gives_str_output_in_it(client: Client) -> None:
    result = client.run(["printf", "h\\351"], agent="dev", encoding="latin-1")
    assert result.stdout == "hé"


def test_a_string_as_argv_is_a_type_error_that_says_to_pass_a_list(client: Client) -> None:
    with pytest.raises(TypeError, match=r"\['echo', 'hi'\]"):
        client.run("echo hi", agent="dev")  # type: ignore[call-overload]


async def test_the_async_client_refuses_a_string_as_argv_too(daemon: Daemon) -> None:
    async with AsyncClient(daemon.target, token="x") as c:
        with pytest.raises(TypeError):
            await c.run("echo hi")  # type: ignore[call-overload]


async def test_the_async_client_checks_and_decodes_too(daemon: Daemon) -> None:
    async with AsyncClient(daemon.target, token=API_KEY) as c:
        assert (await c.run(["echo", "hi"], agent="dev", text=True)).stdout == "hi\n"
        with pytest.raises(CommandFailedError) as failed:
            await c.run(["false"], agent="dev", check=True)
    assert failed.value.result.reason is ExitReason.EXITED


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    policy = TEST_POLICY.replace("  auth:\n", "  rate_limiting:\n    enabled: true\n"
                                 "    requests_per_minute: 6\n    burst: 1\n  auth:\n", 1)
    d = start_daemon(Path(tmp_path_factory.mktemp("limited")), policy)
    yield d
    d.stop()


def test_a_rate_limit_says_when_to_retry_as_a_number(limited: Daemon) -> None:
    with limited.client() as c:
        c.run(["true"], agent="dev")
        with pytest.raises(RateLimitedError) as limit:
            c.run(["true"], agent="dev")
    assert limit.value.retry_after is not None
    assert 0 < limit.value.retry_after <= 10
