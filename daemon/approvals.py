"""Human approval: a call the policy asks about waits here until a person decides.

A request is bound to one plan: its 128-bit random id is valid for one decision, and a
decision must name the plan's digest, so nothing can approve a plan nobody was shown. The
caller may decide its own request when ``approvals.allow_self_approval`` is true (the
default); anyone matching ``approvals.approvers`` may decide others' (``ApprovalService``);
with self-approval off, only another person can (four-eyes). Requests live in memory only:
a restarted daemon has none that could be used later. Every request, decision, refusal,
expiry and withdrawal is audited with the requester, the decider, the id and the digest.

In a fleet (``server.cluster``) a subclass shares them through Redis
(``execgate.daemon.cluster``): it fills in ``_share``, ``_lookup`` and ``_consume``, and
holds other hosts' requests here too, marked with their ``host``; the host that asked
audits a request's life, whichever host decided it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from execgate.daemon.access import rule_matches
from execgate.daemon.config import ApprovalsConfig
from execgate.daemon.model import CommandPlan, Denial, DenialKind, Plan, Principal

MAX_PENDING = 1024
"""Requests waiting at once; more are refused rather than queued without bound."""
STOPPING = "the daemon is stopping"


@dataclass(frozen=True)
class Decision:
    """A person's answer."""

    approve: bool
    reason: str
    decider: Principal


@dataclass
class Pending:
    """One request waiting for a decision."""

    id: str
    requester: Principal
    plan: Plan
    digest: str
    prompt: str
    expires_at: float
    """Wall-clock seconds (for the people reading it)."""
    decision: asyncio.Future[Decision] = field(repr=False)
    host: str | None = None
    """In a fleet, the host whose call waits for it; None: this daemon's."""


@dataclass(frozen=True)
class Resolved:
    """A watcher's news that a request is no longer pending."""

    id: str
    outcome: str
    decider: str


WatchEvent = Pending | Resolved


def plan_digest(plan: Plan) -> str:
    """SHA-256 over everything that makes the plan what it is."""
    if isinstance(plan, CommandPlan):
        body: dict[str, Any] = {
            "tool": plan.tool, "agent": plan.agent, "executable": plan.executable,
            "argv": list(plan.argv), "cwd": str(plan.cwd), "env": sorted(plan.env.items()),
            "stdin": plan.stdin, "timeout": plan.limits.timeout,
            "output_limit": plan.limits.output_limit_bytes}
    else:
        body = {"tool": plan.tool, "agent": plan.agent, "handler": plan.handler,
                "arguments": sorted(plan.arguments.items()), "jail": str(plan.jail)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Approvals:
    """Pending requests, their decisions, and who may see and make them."""

    def __init__(self, config: ApprovalsConfig, audit: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._audit = audit
        self._clock = clock
        self._pending: dict[str, Pending] = {}
        self._watchers: dict[asyncio.Queue[WatchEvent | None], Principal] = {}
        self._closed = False

    def start(self) -> None:
        """Begin hearing of requests asked elsewhere: a fleet's do; alone, none are."""

    async def open(self, requester: Principal, plan: Plan, prompt: str) -> Pending:
        """Register a request; its id goes to the caller and to entitled watchers."""
        pending = self._new(requester, plan, prompt)
        await self._share(pending)
        self._pending[pending.id] = pending
        self._audit.approval("approval.requested", pending, requester)
        self._publish(pending)
        return pending

    def _new(self, requester: Principal, plan: Plan, prompt: str) -> Pending:
        if self._closed:
            raise Denial(DenialKind.UNAVAILABLE, f"{STOPPING}; nothing ran", "server")
        if sum(p.host is None for p in self._pending.values()) >= MAX_PENDING:
            raise Denial(DenialKind.RESOURCE_EXHAUSTED,
                         f"{MAX_PENDING} approvals are already pending; retry later",
                         "approvals")
        return Pending(id=secrets.token_hex(16), requester=requester, plan=plan,
                       digest=plan_digest(plan), prompt=prompt,
                       expires_at=self._clock() + self._config.timeout,
                       decision=asyncio.get_running_loop().create_future())

    async def _share(self, pending: Pending) -> None:
        """A fleet publishes the request before anyone hears of it; alone, nothing to do."""

    async def _lookup(self, approval_id: str) -> Pending | None:
        """The request ``approval_id`` while it can still be decided."""
        return self._live(approval_id)

    async def _consume(self, pending: Pending, decision: Decision) -> None:
        """Make ``decision`` the only one ``pending`` gets; a fleet does so atomically in
        Redis and raises Denial when another decision, or the expiry, came first."""

    async def wait(self, pending: Pending) -> Decision:
        """The approving decision; raises Denial when denied or expired. A cancelled wait
        (the caller went away) withdraws the request: nothing can approve it later."""
        try:
            decision = await asyncio.wait_for(asyncio.shield(pending.decision),
                                              self._config.timeout)
        except TimeoutError:
            self._close(pending, "expired", None)
            raise Denial(DenialKind.APPROVAL_EXPIRED,
                         f"no decision within {self._config.timeout:g}s; nothing ran",
                         "approvals.timeout") from None
        except asyncio.CancelledError:
            self._close(pending, "cancelled", None)
            raise
        if not decision.approve:
            raise Denial(DenialKind.APPROVAL_DENIED,
                         f"denied by {decision.decider.subject}"
                         + (f": {decision.reason}" if decision.reason else "")
                         + "; nothing ran", "approvals")
        return decision

    async def decide(self, approval_id: str, approve: bool, reason: str, digest: str,
                     decider: Principal, via_stream: bool = False,
                     own: Pending | None = None) -> None:
        """Apply a decision, or raise Denial (audited) saying why it does not count.

        A decision that came on a call's stream (``via_stream``) may decide only that call's
        own request ``own``.
        """
        pending = await self._lookup(approval_id)
        decision = Decision(approve=approve, reason=reason[:1024], decider=decider)
        try:
            if pending is None:
                raise not_pending(approval_id)
            if via_stream and pending is not own:
                raise Denial(DenialKind.PERMISSION_DENIED,
                             "a call's stream can decide only its own approval", "approvals")
            if digest != pending.digest:
                raise Denial(DenialKind.INVALID_ARGUMENT,
                             "plan_digest does not match the plan of this approval",
                             "approvals")
            if not self.may_decide(decider, pending):
                raise _not_entitled(decider, pending)
            await self._consume(pending, decision)
        except Denial as denial:
            self._audit.approval_refused(approval_id, decider, denial, pending)
            raise
        self._resolve(pending, decision)

    def _resolve(self, pending: Pending, decision: Decision) -> None:
        """``decision`` reaches the call waiting for it, if it waits here."""
        if not pending.decision.done():
            pending.decision.set_result(decision)
        self._close(pending, "approved" if decision.approve else "denied", decision)

    def _live(self, approval_id: str) -> Pending | None:
        pending = self._pending.get(approval_id)
        if pending is None or pending.decision.done() or pending.expires_at <= self._clock():
            return None
        return pending

    def find(self, approval_id: str, principal: Principal) -> Pending:
        """The pending request ``approval_id`` if ``principal`` may decide it, so that a
        decision can name what it decides; else raise Denial (audited) saying why not."""
        pending = self._live(approval_id)
        try:
            if pending is None:
                raise not_pending(approval_id)
            if not self.may_decide(principal, pending):
                raise _not_entitled(principal, pending)
        except Denial as denial:
            self._audit.approval_refused(approval_id, principal, denial, pending)
            raise
        return pending

    def may_decide(self, principal: Principal, pending: Pending) -> bool:
        """Self-approval as the policy says; others only as approvers."""
        if _same(principal, pending.requester):
            return self._config.allow_self_approval
        return any(rule_matches(rule, principal) for rule in self._config.approvers)

    async def watch(self, principal: Principal) -> AsyncIterator[WatchEvent]:
        """What ``principal`` may decide: pending requests first, then news as it comes."""
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        for pending in list(self._pending.values()):
            if self._live(pending.id) and self.may_decide(principal, pending):
                queue.put_nowait(pending)
        if self._closed:
            return
        self._watchers[queue] = principal
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            del self._watchers[queue]

    def close(self) -> None:
        """Shutdown: withdraw every pending request at once (nothing ran, nothing will) and
        end every watch, so that no call waits out the daemon's grace."""
        self._closed = True
        for pending in list(self._pending.values()):
            if pending.host is not None:  # another host's: it goes on without this one
                del self._pending[pending.id]
                continue
            if not pending.decision.done():
                pending.decision.set_exception(
                    Denial(DenialKind.UNAVAILABLE, f"{STOPPING}; nothing ran", "server"))
            self._close(pending, "withdrawn", None, STOPPING)
        for queue in self._watchers:
            queue.put_nowait(None)

    def _publish(self, event: WatchEvent, pending: Pending | None = None) -> None:
        subject = pending or event
        for queue, principal in self._watchers.items():
            if isinstance(subject, Pending) and self.may_decide(principal, subject):
                queue.put_nowait(event)

    def _close(self, pending: Pending, outcome: str, decision: Decision | None,
               reason: str = "") -> None:
        if self._pending.pop(pending.id, None) is None:
            return
        if pending.host is None:
            self._audit.approval(f"approval.{outcome}", pending,
                                 decision.decider if decision else None,
                                 reason=decision.reason if decision else reason)
        self._publish(Resolved(pending.id, outcome,
                               decision.decider.subject if decision else ""), pending)


def not_pending(approval_id: str) -> Denial:
    """The refusal of a decision for a request that cannot be decided (any more)."""
    return Denial(DenialKind.APPROVAL_NOT_FOUND,
                  f"no pending approval {approval_id[:40]!r} (decided, expired or unknown)",
                  "approvals")


def _not_entitled(principal: Principal, pending: Pending) -> Denial:
    return Denial(DenialKind.PERMISSION_DENIED, f"{principal.subject!r} may not decide this "
                  "approval", "approvals.allow_self_approval"
                  if _same(principal, pending.requester) else "approvals.approvers")


def _same(a: Principal, b: Principal) -> bool:
    return a.subject == b.subject and a.method == b.method
