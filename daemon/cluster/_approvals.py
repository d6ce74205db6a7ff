"""Approvals shared by a fleet: asked on one host, seen and decided on any, used once.

A request is a hash ``NS:approval:ID`` (its digest and its body: requester, plan, prompt,
expiry, the host whose call waits) that expires with the request, listed in the sorted set
``NS:approvals:pending`` (by expiry) for hosts that join or reconnect. Every change is
published on the channel ``NS:approvals:events``, and each host mirrors the pending
requests, so that WatchApprovals and GetApproval answer from memory.

A decision is one Lua script: it checks that the request still exists with the digest the
decider saw, deletes it, records the decision (``NS:decision:ID``, for the waiting host to
find after a lost message) and publishes it, atomically. Whoever comes second finds nothing
to decide: a decision is single-use across the fleet, and a replay on any host is refused.
The waiting host runs its call only on a decision that came from Redis (its own script's
success, the published message or the recorded decision). A host cut off from Redis can
neither ask, nor decide, nor learn of a decision: its calls fail closed (UNAVAILABLE, or
expired), and no approval is used twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from redis.exceptions import RedisError

from execgate.daemon.approvals import Approvals, Decision, Pending, not_pending
from execgate.daemon.audit import Audit
from execgate.daemon.cluster._cluster import Cluster, cause_of
from execgate.daemon.cluster._plans import (
    plan_from_json,
    plan_to_json,
    principal_from_json,
    principal_to_json,
)
from execgate.daemon.config import ApprovalsConfig
from execgate.daemon.model import Denial, DenialKind

MAX_MIRRORED = 16_384
"""Other hosts' requests held at once; past it the newest are not shown here."""
RECONNECT = 1.0
"""Seconds between attempts to hear the fleet again after Redis went away."""
log = structlog.get_logger()

# KEYS: request, index. ARGV: digest, body, ttl ms, now ms, expires ms, id, channel, message.
_OPEN = """
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'body', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[7], ARGV[8])
"""
# KEYS: request, index, decision. ARGV: digest, id, decision, ttl ms, channel, message.
# 1: decided; 0: nothing to decide (decided, expired, withdrawn, unknown); -1: other digest.
_DECIDE = """
local digest = redis.call('HGET', KEYS[1], 'digest')
if not digest then return 0 end
if digest ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""
# KEYS: request, index. ARGV: id, channel, message.
_WITHDRAW = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
"""


class SharedApprovals(Approvals):
    """``Approvals`` whose requests and decisions are the fleet's."""

    def __init__(self, config: ApprovalsConfig, audit: Audit, cluster: Cluster,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, audit, clock)
        self._cluster = cluster
        self._channel = cluster.key("approvals", "events")
        self._index = cluster.key("approvals", "pending")
        self._ttl_ms = max(1, int(config.timeout * 1000))
        redis = cluster.redis
        self._open_script = redis.register_script(_OPEN)
        self._decide_script = redis.register_script(_DECIDE)
        self._withdraw_script = redis.register_script(_WITHDRAW)
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Hear the fleet: other hosts' requests, and decisions made anywhere."""
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    def close(self) -> None:
        """Withdraw this host's requests (in the fleet too) and stop hearing the fleet."""
        super().close()
        if self._listener is not None:
            self._listener.cancel()

    # -- the hooks of Approvals ----------------------------------------------------------

    async def _share(self, pending: Pending) -> None:
        body = json.dumps(self._body(pending))
        now_ms = int(self._clock() * 1000)
        with self._cluster.reaching("an approval"):
            await self._open_script(
                keys=[self._request_key(pending.id), self._index],
                args=[pending.digest, body, self._ttl_ms, now_ms,
                      int(pending.expires_at * 1000), pending.id, self._channel,
                      json.dumps({"event": "pending", "body": body})])

    async def _lookup(self, approval_id: str) -> Pending | None:
        pending = self._live(approval_id)
        if pending is not None or len(approval_id) > 64:
            return pending
        # Not heard of yet (a message on its way): Redis knows.
        with self._cluster.reaching("deciding an approval"):
            body = await self._cluster.redis.hget(self._request_key(approval_id), "body")
        return None if body is None else self._mirror(body)

    async def _consume(self, pending: Pending, decision: Decision) -> None:
        recorded = json.dumps({"approve": decision.approve, "reason": decision.reason,
                               "decider": principal_to_json(decision.decider)})
        message = json.dumps({"event": "resolved", "id": pending.id,
                              "outcome": "approved" if decision.approve else "denied",
                              "decision": recorded})
        with self._cluster.reaching("deciding an approval"):
            outcome = await self._decide_script(
                keys=[self._request_key(pending.id), self._index,
                      self._cluster.key("decision", pending.id)],
                args=[pending.digest, pending.id, recorded, self._ttl_ms, self._channel,
                      message])
        if outcome == 0:
            raise not_pending(pending.id)
        if outcome == -1:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         "plan_digest does not match the plan of this approval", "approvals")

    def _close(self, pending: Pending, outcome: str, decision: Decision | None,
               reason: str = "") -> None:
        known = pending.id in self._pending
        super()._close(pending, outcome, decision, reason)
        if known and pending.host is None and decision is None:
            # Expired, withdrawn or its caller gone: no other host may still decide it.
            message = json.dumps({"event": "resolved", "id": pending.id, "outcome": outcome})
            self._cluster.spawn("approval.withdrawn", self._withdraw_script(
                keys=[self._request_key(pending.id), self._index],
                args=[pending.id, self._channel, message]))

    # -- hearing the fleet ---------------------------------------------------------------

    async def _listen(self) -> None:
        reachable = True
        while True:
            try:
                async with self._cluster.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    await self._catch_up()
                    if not reachable:
                        log.info("cluster.approvals_heard_again")
                    reachable = True
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True,
                            timeout=self._cluster.config.lease / 3)
                        if message is not None and message["type"] == "message":
                            self._on_message(message["data"])
            except (RedisError, OSError) as exc:
                if reachable:
                    log.warning("cluster.approvals_unheard", cause=cause_of(exc),
                                detail="other hosts' requests are hidden until Redis is "
                                       "back; no approval can be asked or decided")
                reachable = False
                self._forget_others()
                await asyncio.sleep(RECONNECT)

    async def _catch_up(self) -> None:
        """After (re)subscribing: the requests pending now, and decisions missed."""
        redis = self._cluster.redis
        ids = cast(list[bytes], await redis.zrangebyscore(
            self._index, int(self._clock() * 1000), "+inf"))
        async with redis.pipeline(transaction=False) as pipe:
            for approval_id in ids:
                pipe.hget(self._request_key(approval_id.decode()), "body")
            bodies = await pipe.execute()
        present = set()
        for body in bodies:
            if body is not None and (pending := self._mirror(body)) is not None:
                present.add(pending.id)
        for pending in list(self._pending.values()):
            if pending.host is not None and pending.id not in present:
                super()._close(pending, "expired", None)
        for pending in [p for p in self._pending.values() if p.host is None]:
            recorded = await redis.get(self._cluster.key("decision", pending.id))
            if recorded is not None:
                self._resolve(pending, _decision(recorded))

    def _on_message(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            if message["event"] == "pending":
                self._mirror(message["body"])
                return
            pending = self._pending.get(message["id"])
            if pending is None:
                return
            if "decision" in message:
                self._resolve(pending, _decision(message["decision"]))
            elif pending.host is not None:  # only the asking host withdraws its own
                super()._close(pending, str(message["outcome"]), None)
        except (ValueError, KeyError, TypeError):
            log.warning("cluster.approval_message_unreadable")

    def _mirror(self, body: bytes | str) -> Pending | None:
        """Another host's request, held here and shown to watchers; None for this host's
        own, an expired one, or past MAX_MIRRORED."""
        try:
            data = json.loads(body)
            if data["host"] == self._cluster.host_id:
                return self._pending.get(data["id"])
            if data["id"] in self._pending:
                return self._pending[data["id"]]
            pending = Pending(
                id=str(data["id"]), requester=principal_from_json(data["requester"]),
                plan=plan_from_json(data["plan"]), digest=str(data["digest"]),
                prompt=str(data["prompt"]), expires_at=float(data["expires_at"]),
                decision=asyncio.get_running_loop().create_future(), host=str(data["host"]))
        except (ValueError, KeyError, TypeError):
            log.warning("cluster.approval_unreadable")
            return None
        self._prune()
        if pending.expires_at <= self._clock() or len(self._pending) >= MAX_MIRRORED:
            return None
        self._pending[pending.id] = pending
        self._publish(pending)
        return pending

    def _prune(self) -> None:
        """Other hosts' requests past their expiry (their host may be gone)."""
        now = self._clock()
        for pending in [p for p in self._pending.values()
                        if p.host is not None and p.expires_at <= now]:
            super()._close(pending, "expired", None)

    def _forget_others(self) -> None:
        """Unreachable: other hosts' requests can be neither decided nor kept current."""
        for pending in [p for p in self._pending.values() if p.host is not None]:
            super()._close(pending, "withdrawn", None)

    def _body(self, pending: Pending) -> dict[str, Any]:
        return {"id": pending.id, "host": self._cluster.host_id,
                "requester": principal_to_json(pending.requester),
                "plan": plan_to_json(pending.plan), "digest": pending.digest,
                "prompt": pending.prompt, "expires_at": pending.expires_at}

    def _request_key(self, approval_id: str) -> str:
        return self._cluster.key("approval", approval_id)


def _decision(recorded: bytes | str) -> Decision:
    data = json.loads(recorded)
    return Decision(approve=bool(data["approve"]), reason=str(data["reason"]),
                    decider=principal_from_json(data["decider"]))
