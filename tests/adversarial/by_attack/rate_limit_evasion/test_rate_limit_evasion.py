"""Rate-limit evasion: getting more tool calls than the policy's bucket allows. Each extra
call ends RESOURCE_EXHAUSTED with the rule server.rate_limiting, and no more commands ran
than the bucket held (counted from outside: the files they would have made)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from execgate.client import Client, ExecgateError, RateLimitedError
from tests.conftest import TEST_POLICY, Daemon, start_daemon

BURST = 3
OTHER_KEY = "second-key-0123456789"
POLICY = TEST_POLICY.replace(
    "server:\n", "server:\n  rate_limiting: {requests_per_minute: 1, burst: 3, per_user: true}\n",
    1).replace("      - {name: tester, key: \"${TEST_API_KEY}\"}\n",
               "      - {name: tester, key: \"${TEST_API_KEY}\"}\n"
               f"      - {{name: second, key: \"{OTHER_KEY}\"}}\n", 1)
"""One call a minute after a burst of three, per principal: a test never sees a refill."""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon per test: each starts with full buckets."""
    d = start_daemon(tmp_path, POLICY)
    yield d
    d.stop()


def _touch(client: Client, name: str, agent: str = "dev") -> bool:
    """Whether the call ran; a refusal must be the rate limit's."""
    try:
        client.run(["touch", name], agent=agent, tool="shell")
    except RateLimitedError as limited:
        rule = limited.rule
    else:
        return True
    assert rule == "server.rate_limiting"
    return False


def _made(daemon: Daemon) -> int:
    return len(list(daemon.workspace.glob("f*")))


def test_a_burst_past_the_bucket_is_refused_with_the_rule(daemon: Daemon) -> None:
    """The baseline: the fourth call of a burst of three."""
    with daemon.client() as c:
        ran = [_touch(c, f"f{i}") for i in range(BURST + 3)]
    assert ran == [True] * BURST + [False] * 3
    assert _made(daemon) == BURST


def test_a_new_connection_per_call_does_not_refill_the_bucket(daemon: Daemon) -> None:
    """Reconnecting to look like a new client (limits keyed by connection)."""
    ran = []
    for i in range(BURST + 3):
        with daemon.client() as c:
            ran.append(_touch(c, f"f{i}"))
    assert ran.count(True) == BURST
    assert _made(daemon) == BURST


def test_concurrent_calls_do_not_overrun_the_bucket(daemon: Daemon) -> None:
    """A race on the bucket: twenty calls at once (check-then-act limiters)."""
    def one(i: int) -> bool:
        with daemon.client() as c:
            return _touch(c, f"f{i}")

    with ThreadPoolExecutor(20) as pool:
        ran = list(pool.map(one, range(20)))
    assert ran.count(True) == BURST
    assert _made(daemon) == BURST


def test_switching_agents_does_not_refill_the_bucket(daemon: Daemon) -> None:
    """A bucket per agent or tool would multiply the limit by their number."""
    with daemon.client() as c:
        ran = [_touch(c, f"f{i}", agent=("dev", "ops")[i % 2]) for i in range(BURST + 3)]
    assert ran.count(True) == BURST
    assert _made(daemon) == BURST


def test_function_tool_calls_spend_the_same_bucket(daemon: Daemon) -> None:
    """Spending the limit on cheap calls, or dodging it through them."""
    (daemon.workspace / "small.txt").write_text("x\n")
    with daemon.client() as c:
        for _ in range(BURST):
            c.call("read_file", agent="dev", path="small.txt")
        with pytest.raises(RateLimitedError):
            c.call("read_file", agent="dev", path="small.txt")
        assert not _touch(c, "f0")
    assert _made(daemon) == 0


def test_one_principals_flood_does_not_spend_anothers_bucket(daemon: Daemon) -> None:
    """A noisy neighbour: one caller exhausting a shared limit to deny others service."""
    with daemon.client() as flood:
        for i in range(BURST + 5):
            with contextlib.suppress(ExecgateError):
                _touch(flood, f"f{i}")
    with Client(daemon.target, token=OTHER_KEY) as other:
        assert _touch(other, "g-other")
    assert (daemon.workspace / "g-other").exists()


def test_refused_calls_do_not_run_anything(daemon: Daemon) -> None:
    """What a limited call was asked to do never happens, even partly (checked on disk)."""
    with daemon.client() as c:
        for i in range(BURST):
            assert _touch(c, f"f{i}")
        assert not _touch(c, "f-late")
    assert not (daemon.workspace / "f-late").exists()
