"""The daemon's membership in a fleet: its Redis connection, its keys and its lease.

Every key is ``NAMESPACE:KIND:...`` and has a TTL, so that nothing a fleet writes outlives
its use. A host holds ``NAMESPACE:host:HOST_ID`` (its advertised address) for one lease and
refreshes it every third of one: a host whose key expired is gone, and its runs are LOST.

Redis errors never reach a caller as such: ``reaching`` turns them into ClusterUnavailable,
an UNAVAILABLE denial naming the cause in words (never the exception's text, which may hold
the socket's path or the server's address).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any

import redis.asyncio
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from execgate.daemon.config import ClusterConfig
from execgate.daemon.model import Denial, DenialKind

RULE = "server.cluster.redis_url"
SOCKET_TIMEOUT = 2.0
"""Seconds a Redis command may take: past it Redis counts as unreachable (a partition
drops packets instead of refusing them)."""
log = structlog.get_logger()


class ClusterUnavailable(Denial):
    """The fleet's shared state could not be reached: UNAVAILABLE, nothing ran."""

    def __init__(self, what: str, cause: str) -> None:
        super().__init__(DenialKind.UNAVAILABLE,
                         f"{what} needs the fleet's Redis, which is unreachable ({cause}); "
                         "nothing ran; retry when it is back", RULE)
        self.cause = cause


def cause_of(exc: BaseException) -> str:
    """What went wrong reaching Redis, in words a caller may read."""
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "it did not answer in time"
    if isinstance(exc, RedisConnectionError | OSError):
        return "the connection failed"
    return "it answered with an error"


class Cluster:
    """This daemon's view of the fleet: ``redis``, ``host_id`` and ``key``."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.host_id = config.host_id
        self.redis: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            config.redis_url, socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 1),
            health_check_interval=max(1, int(config.lease / 3)))
        self._heartbeat: asyncio.Task[None] | None = None
        self._reachable = True
        self._work: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    def key(self, kind: str, *parts: str) -> str:
        """``NAMESPACE:KIND:PART:...``: every key the fleet writes."""
        return ":".join((self.config.namespace, kind, *parts))

    @property
    def lease_ms(self) -> int:
        """The lease in milliseconds (Redis's PX)."""
        return int(self.config.lease * 1000)

    @contextlib.contextmanager
    def reaching(self, what: str) -> Iterator[None]:
        """Redis errors inside become ClusterUnavailable naming ``what`` needed it."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(what, cause_of(exc)) from None

    def spawn(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (telling the fleet something nobody waits for);
        ``close`` lets it finish first. Redis being unreachable then is logged: what it
        wrote has a TTL, so the fleet forgets it anyway."""
        async def guarded() -> None:
            try:
                await work
            except (RedisError, OSError) as exc:
                log.warning("cluster.unsent", what=what, cause=cause_of(exc))

        task = asyncio.get_running_loop().create_task(guarded())
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def start(self) -> None:
        """Announce this host (once now, then every third of the lease). An unreachable
        Redis does not stop the daemon: calls that need it are refused until it is back."""
        await self._announce()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def close(self) -> None:
        """Leave the fleet: finish what was spawned, stop the heartbeat, withdraw this
        host's key, disconnect."""
        if self._work:
            await asyncio.wait(set(self._work), timeout=SOCKET_TIMEOUT)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.key("host", self.host_id))
        await self.redis.aclose()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease / 3)
            await self._announce()

    async def _announce(self) -> None:
        try:
            await self.redis.set(self.key("host", self.host_id), self.config.advertise,
                                 px=self.lease_ms)
        except (RedisError, OSError) as exc:
            if self._reachable:
                log.warning("cluster.redis_unreachable", host_id=self.host_id,
                            cause=cause_of(exc))
            self._reachable = False
            return
        if not self._reachable:
            log.info("cluster.redis_reachable", host_id=self.host_id)
        self._reachable = True
