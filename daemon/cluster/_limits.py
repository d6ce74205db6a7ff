"""Rate limits shared by a fleet: one token bucket per principal (or one for everyone),
kept in Redis and taken from by a Lua script, so that N calls a minute are N across every
host together.

The bucket ``NS:ratelimit:SHA`` (a hash of the bucket's name: subjects may be long) holds
its tokens and the time of its last refill, in Redis's own clock (hosts' clocks may
disagree); it expires once it would have refilled, when forgetting it changes nothing.
While Redis is unreachable, ``server.cluster.on_redis_down`` decides: ``closed`` refuses
(UNAVAILABLE naming Redis), ``local`` takes from this host's own bucket instead.
"""

from __future__ import annotations

import hashlib

from execgate.daemon.cluster._cluster import Cluster, ClusterUnavailable
from execgate.daemon.config import RateLimitConfig
from execgate.daemon.limits import RateLimiter
from execgate.daemon.model import Principal

# KEYS: bucket. ARGV: tokens per ms, burst. Returns {1} or {0, ms to wait as a string}
# (Redis truncates Lua numbers to integers on the way out).
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(held[1]) or burst, tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1000)
if taken == 1 then return {1} end
return {0, tostring((1 - tokens) / rate)}
"""


class SharedRateLimiter(RateLimiter):
    """A RateLimiter whose buckets are the fleet's."""

    def __init__(self, config: RateLimitConfig, cluster: Cluster) -> None:
        super().__init__(config)
        self._cluster = cluster
        self._per_ms = config.requests_per_minute / 60_000
        self._burst_tokens = config.burst
        self._take = cluster.redis.register_script(_TAKE)

    async def take(self, principal: Principal) -> None:
        """Take a token from the fleet's bucket; raises Denial(RESOURCE_EXHAUSTED) over the
        limit, ClusterUnavailable without Redis (unless ``on_redis_down: local``)."""
        if not self.enabled:
            return
        name = hashlib.sha256(self.bucket(principal).encode()).hexdigest()[:32]
        try:
            with self._cluster.reaching("a rate-limited call"):
                answer = await self._take(keys=[self._cluster.key("ratelimit", name)],
                                          args=[repr(self._per_ms), self._burst_tokens])
        except ClusterUnavailable:
            if self._cluster.config.on_redis_down != "local":
                raise
            self.check(principal)
            return
        if int(answer[0]) != 1:
            raise self.refusal(principal, float(answer[1]) / 1000)
