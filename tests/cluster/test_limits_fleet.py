"""Rate limits shared by three real daemons through a real Redis, and what happens to calls
when Redis goes away: new ones refused (or limited locally, where configured), running ones
left alone."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from execgate.client import Exited, OutputChunk, RateLimitedError, RPCError
from tests.cluster.conftest import Fleet, RedisServer, start_fleet
from tests.conftest import API_KEY

LIMITS = ("  rate_limiting:\n    per_user: true\n    requests_per_minute: 3\n"
          "    burst: 3\n")
"""3 calls a minute per principal, all at once: a token comes back every 20 s."""


@pytest.fixture
def limited(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path, redis_server, extra_server=LIMITS)
    yield fleet
    fleet.stop()


def true_on(fleet: Fleet, n: int, token: str = API_KEY) -> int:
    with fleet.hosts[n].client(token) as c:
        return c.run(["true"], agent="dev").exit_code


def test_a_per_user_limit_admits_n_across_all_hosts_together(limited: Fleet) -> None:
    assert [true_on(limited, n) for n in (0, 1, 2)] == [0, 0, 0]
    for n in (0, 1, 2):
        with pytest.raises(RateLimitedError) as refused:
            true_on(limited, n)
        assert refused.value.rule == "server.rate_limiting"
        assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 20


def test_the_fleet_bucket_expires_in_redis(limited: Fleet, redis_server: RedisServer) -> None:
    """Nothing the limiter writes outlives a full refill."""
    true_on(limited, 0)
    with redis.Redis(unix_socket_path=str(redis_server.socket)) as r:
        keys = list(r.scan_iter("execgate:ratelimit:*"))
        assert len(keys) == 1
        assert 0 < r.pttl(keys[0]) <= 60_000 + 1000


def test_redis_down_refuses_new_calls_while_a_running_job_finishes(
        limited: Fleet, redis_server: RedisServer) -> None:
    host = limited.hosts[0]
    stdin: queue.Queue[bytes | None] = queue.Queue()
    with host.client() as c:
        events = c.stream(["sh", "-c", "echo ready; read line; echo done $line"], agent="dev",
                          stdin=iter(stdin.get, None))
        assert next(e for e in events if isinstance(e, OutputChunk)).data == b"ready\n"
        redis_server.kill()
        for n in (0, 1, 2):
            with pytest.raises(RPCError) as refused:
                true_on(limited, n)
            assert refused.value.status is grpc.StatusCode.UNAVAILABLE
            assert "Redis" in str(refused.value)
            assert refused.value.rule == "server.cluster.redis_url"
            assert str(redis_server.socket) not in str(refused.value)
        stdin.put(b"anyway\n")
        stdin.put(None)
        rest = list(events)
    assert b"".join(e.data for e in rest if isinstance(e, OutputChunk)) == b"done anyway\n"
    assert isinstance(rest[-1], Exited) and rest[-1].exit_code == 0


def test_redis_down_falls_back_to_each_hosts_bucket_where_configured(
        tmp_path: Path, redis_server: RedisServer) -> None:
    fleet = start_fleet(tmp_path, redis_server, extra_server=LIMITS,
                        env={"ON_REDIS_DOWN": "local"})
    try:
        redis_server.kill()
        assert [true_on(fleet, 0) for _ in range(3)] == [0, 0, 0]
        with pytest.raises(RateLimitedError):
            true_on(fleet, 0)
        assert true_on(fleet, 1) == 0  # host 2's own bucket
    finally:
        fleet.stop()


def test_redis_back_is_used_again(limited: Fleet, redis_server: RedisServer) -> None:
    """A restarted Redis (empty) serves the next call: no daemon restart needed."""
    redis_server.kill()
    with pytest.raises(RPCError):
        true_on(limited, 0)
    redis_server.start()
    assert true_on(limited, 0) == 0
