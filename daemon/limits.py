"""Limits: how many calls the daemon takes, from whom, and how many it runs at once.

Rate limiting is the guide's ``server.rate_limiting``: a token bucket that refills at
``requests_per_minute`` and holds ``burst`` calls, one for the whole daemon or, with
``per_user``, one per principal (anonymous callers share one). A call over the limit is
refused with RESOURCE_EXHAUSTED and the time to wait; it is never queued. The call pipeline
awaits ``take``: in a fleet, ``SharedRateLimiter`` (``execgate.daemon.cluster``) takes from
buckets in Redis instead.

Failed authentication is limited apart from calls (``FailedAttempts``), per peer address,
because a caller guessing credentials has no principal to be limited by.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from execgate.daemon.config import RateLimitConfig
from execgate.daemon.model import Denial, DenialKind, Principal

MAX_BUCKETS = 100_000
"""Principals remembered at once; the idlest (full) buckets are forgotten first."""

MAX_PEERS = 10_000
"""Peer addresses whose failed authentications are remembered at once."""


class RunSlots:
    """A server-wide cap on concurrent runs; a full daemon refuses rather than queues."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0

    def acquire(self) -> None:
        """Take a slot or raise Denial(RESOURCE_EXHAUSTED)."""
        if self._used >= self._capacity:
            raise Denial(DenialKind.RESOURCE_EXHAUSTED,
                         f"the daemon is running its maximum of {self._capacity} calls; "
                         "retry later", "server.max_concurrent_runs")
        self._used += 1

    def release(self) -> None:
        """Give a slot back."""
        self._used -= 1


class RateLimiter:
    """Token buckets: ``check`` takes one token or refuses the call."""

    def __init__(self, config: RateLimitConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._enabled = config.enabled
        self._per_user = config.per_user
        self._rate = config.requests_per_minute / 60.0
        self._burst = float(config.burst)
        self._limit = f"{config.requests_per_minute} calls a minute (burst {config.burst})"
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    @property
    def enabled(self) -> bool:
        """Whether calls are limited at all."""
        return self._enabled

    def bucket(self, principal: Principal) -> str:
        """The name of the bucket ``principal``'s calls take from."""
        return f"{principal.method}:{principal.subject}" if self._per_user else "*"

    def refusal(self, principal: Principal, wait: float) -> Denial:
        """The refusal of a call over the limit, retryable in ``wait`` seconds."""
        whose = f" for {principal.subject}" if self._per_user else ""
        return Denial(DenialKind.RESOURCE_EXHAUSTED,
                      f"rate limit of {self._limit}{whose} reached; retry in {wait:.1f}s",
                      "server.rate_limiting", retry_after=wait)

    async def take(self, principal: Principal) -> None:
        """``check``, as the call pipeline awaits it (a fleet's limiter asks Redis)."""
        self.check(principal)

    def check(self, principal: Principal) -> None:
        """Take a token for a call by ``principal``; raises Denial(RESOURCE_EXHAUSTED)."""
        if not self._enabled:
            return
        key = self.bucket(principal)
        now = self._clock()
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise self.refusal(principal, (1.0 - tokens) / self._rate)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        self._buckets = {k: (t, last) for k, (t, last) in self._buckets.items()
                         if t + (now - last) * self._rate < self._burst}


class FailedAttempts:
    """Failed authentications per peer address: ``max_failures`` per ``window``.

    A token bucket per address, refilled over the window. ``check`` runs before a presented
    credential is verified: an address out of attempts is refused without the check, so a
    right guess looks like a wrong one and the lock is no oracle. A success refunds nothing:
    a caller holding one valid key could otherwise keep guessing another between its own
    calls. At most ``MAX_PEERS`` addresses are remembered, the least recent forgotten first:
    an attacker rotating addresses bounds the table, not the other way round.
    """

    def __init__(self, max_failures: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = float(max_failures)
        self._rate = max_failures / window
        self._limit = f"{max_failures} failed authentications per {window:g}s"
        self._clock = clock
        # peer -> (attempts left, last update), in order of the last failure
        self._peers: dict[str, tuple[float, float]] = {}

    def _left(self, peer: str, now: float) -> float:
        left, last = self._peers.get(peer, (self._max, now))
        return min(self._max, left + (now - last) * self._rate)

    def check(self, peer: str) -> None:
        """Raise Denial(RESOURCE_EXHAUSTED) while ``peer`` has no attempt left."""
        left = self._left(peer, self._clock())
        if left < 1.0:
            wait = (1.0 - left) / self._rate
            raise Denial(DenialKind.RESOURCE_EXHAUSTED,
                         f"too many failed authentications from this address "
                         f"({self._limit}); credentials are refused unchecked for "
                         f"{wait:.0f}s", "server.auth.max_failed_attempts", retry_after=wait)

    def record(self, peer: str) -> None:
        """Count one failed authentication from ``peer``."""
        now = self._clock()
        left = self._left(peer, now)
        self._peers.pop(peer, None)  # re-inserted last: the dict stays in order of recency
        self._peers[peer] = (max(0.0, left - 1.0), now)
        if len(self._peers) > MAX_PEERS:
            del self._peers[next(iter(self._peers))]

    def __len__(self) -> int:
        return len(self._peers)
