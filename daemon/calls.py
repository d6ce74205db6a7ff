"""The call pipeline, gRPC-free: identity -> limits -> access -> policy -> approval -> run
slot -> sandbox -> replay -> audit, and the registry of runs that lets a run outlive the
stream that started it.

A servicer hands ``admit`` the caller's principal, the snapshot its call pinned and the
ToolCall; ``approve`` waits for a person when the policy asks; ``start`` takes a run slot
(only then: a call waiting minutes for a person holds none) and starts the run. Each run
is a ``RunEntry``: its output goes into a replay buffer whoever listens, so that readers
(``RunEntry.read``) can come, go and come back. A run ends in exactly one Exit, audited
as soon as it is known; its entry stays for ``runs.retention``, then is forgotten.

Who may see a run: the principal that started it, and the policy's ``runs.operators``.
For anyone else a run does not exist: the same NOT_FOUND as an unknown id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from execgate.daemon.access import rule_matches
from execgate.daemon.approvals import Approvals, Pending
from execgate.daemon.audit import Audit
from execgate.daemon.config import RunsConfig
from execgate.daemon.limits import RunSlots
from execgate.daemon.model import (
    CommandPlan,
    Denial,
    DenialKind,
    Exit,
    ExitReason,
    FunctionPlan,
    Output,
    Plan,
    Principal,
    RunEvent,
    ToolCall,
)
from execgate.daemon.replay import Heartbeat, Replay, ReplayHold
from execgate.daemon.runs import CommandRun, FunctionRun, Run
from execgate.daemon.sandbox import Layers, Spawner
from execgate.daemon.snapshot import Snapshot

MAX_SIGNAL = 64
RETAINED_BYTES = 64 * 1024 * 1024
"""Output of finished runs held for attachers, in all: each run's replay buffer is bounded,
but a busy daemon finishes many runs within their retention."""


@dataclass(frozen=True)
class Admitted:
    """A call that passed limits, access and policy: what runs, and whom to ask first."""

    principal: Principal
    snapshot: Snapshot
    call: ToolCall
    plan: Plan
    layers: Layers | None
    """The confinement the sandbox will give a command; None for a function tool."""
    prompt: str | None
    """What a person is asked before it runs; None when nobody is."""


@dataclass(eq=False)
class RunEntry:
    """One run in the registry: who started it, what runs, its output and its end."""

    id: str
    principal: Principal
    plan: Plan
    run: Run
    replay: Replay
    runs: RunsConfig
    """The runs section of the policy the run started under."""
    detached: bool
    started_at: float
    """Wall-clock seconds."""
    pump: asyncio.Task[None] | None = None
    unattended: asyncio.TimerHandle | None = field(default=None, repr=False)
    handed_over: bool = False
    """The call that started it answered before its exit: its caller reads on (AttachRun)."""
    held: ReplayHold | None = field(default=None, repr=False)
    """Its output from where the caller was handed it over, until it attaches."""

    @property
    def exit(self) -> Exit | None:
        """How the run ended, once it has."""
        return self.replay.exit

    @property
    def layers(self) -> Layers | None:
        """The kernel layers confining the command."""
        return self.run.layers

    async def read(self, stdout_offset: int = 0, stderr_offset: int = 0,
                   first_heartbeat: float | None = None, heartbeat: float | None = None,
                   ) -> AsyncGenerator[RunEvent | Heartbeat, None]:
        """Output from these offsets, then the exit; Heartbeats while quiet, every
        ``heartbeat`` seconds (default: the policy's; the first after ``first_heartbeat``,
        when given). A detached run with nobody reading gets
        ``runs.detached_max_time`` before it is stopped. A run handed over to its caller is
        claimed by the first reader that reads all its hold keeps (another, an operator
        tailing it, leaves the hold and its grace as they are)."""
        taking = None
        if self.held is not None and self.replay.covers(self.held, stdout_offset,
                                                        stderr_offset):
            taking, self.held = self.held, None
        if self.unattended is not None and self.held is None:
            self.unattended.cancel()
            self.unattended = None
        try:
            async with contextlib.aclosing(self.replay.read(
                    stdout_offset, stderr_offset, heartbeat or self.runs.heartbeat_interval,
                    first_heartbeat, taking=taking)) as events:
                async for event in events:
                    yield event
        finally:
            if self.replay.readers == 0 and self.exit is None and self.unattended is None:
                if self.handed_over:
                    self.unattended = asyncio.get_running_loop().call_later(
                        self.runs.handover_grace, self._unclaimed)
                elif self.detached:
                    self.unattended = asyncio.get_running_loop().call_later(
                        self.runs.detached_max_time, self.run.stop, ExitReason.TIMEOUT,
                        f"ran detached with nobody attached for "
                        f"{self.runs.detached_max_time:g}s (runs.detached_max_time)")

    def hand_over(self, stdout_offset: int, stderr_offset: int) -> None:
        """The call answers before the exit: its caller reads on with AttachRun from these
        offsets. Until it attaches, the output waits for it as for a reader there; unless it
        attaches within ``runs.handover_grace``, the run is stopped (and its output let go).
        A caller that attaches and leaves early gets the grace again, without a hold."""
        self.handed_over = True
        self.held = self.replay.hold(stdout_offset, stderr_offset)
        self.unattended = asyncio.get_running_loop().call_later(self.runs.handover_grace,
                                                                self._unclaimed)

    def finished(self) -> None:
        """The run ended: nothing stops it any more. A hold stays until its caller attaches
        or the grace passes (the output it keeps is the caller's)."""
        if self.unattended is not None and self.held is None:
            self.unattended.cancel()
            self.unattended = None

    def let_go(self) -> None:
        """Stop keeping output for a caller still to come (the run is being stopped: its
        end must not wait for a reader that may never come)."""
        if self.held is not None:
            self.replay.unhold(self.held)
            self.held = None

    def _unclaimed(self) -> None:
        self.unattended = None
        self.let_go()
        if self.exit is None:
            self.run.stop(ExitReason.TIMEOUT, f"handed over to its caller, who did not read on "
                          f"within {self.runs.handover_grace:g}s (runs.handover_grace)")


class RunRegistry(Protocol):
    """A fleet's shared registry of runs: names new runs, and is told when one ends and when
    it is forgotten."""

    def new_id(self) -> str:
        """An id for a new run."""

    def ended(self, entry: RunEntry) -> None:
        """``entry`` has its exit."""

    def forgotten(self, run_id: str) -> None:
        """``run_id`` is past its retention."""


def _key(principal: Principal) -> tuple[str, str]:
    return principal.method, principal.subject


class Calls:
    """Admits, approves and starts calls, and keeps their runs."""

    def __init__(self, slots: RunSlots, spawner: Spawner, approvals: Approvals, audit: Audit,
                 wall_clock: Callable[[], float] = time.time,
                 registry: RunRegistry | None = None) -> None:
        self._slots = slots
        self._registry = registry
        self._spawner = spawner
        self._approvals = approvals
        self._audit = audit
        self._wall_clock = wall_clock
        self._entries: dict[str, RunEntry] = {}
        self._running: set[str] = set()
        self._forget: dict[str, asyncio.TimerHandle] = {}
        self._retained: dict[str, tuple[RunEntry, int]] = {}
        """Finished runs whose output is still held, the oldest first, with the bytes they
        were counted for (a buffer may shrink after: a reader that held it back left)."""
        self._retained_bytes = 0
        self._waiting: dict[tuple[str, str], int] = {}  # approvals pending, per principal
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # -- the pipeline ------------------------------------------------------------------

    async def admit(self, principal: Principal, snapshot: Snapshot, call: ToolCall,
                    may_ask: bool = True) -> Admitted:
        """Limits, access, policy and the sandbox's own check; raises Denial (audited).
        ``may_ask``: whether the call can wait for a person's approval (a Run or RunToExit
        call cannot)."""
        try:
            self._check_serving()
            await snapshot.limiter.take(principal)
            agent_name, agent = snapshot.access.agent_for(principal, call.agent)
            plan = snapshot.policy.plan(agent_name, agent, call)
            # Before asking a human: a call the sandbox would refuse is refused now.
            layers = self._spawner.layers(plan) if isinstance(plan, CommandPlan) else None
            prompt = snapshot.policy.approval_prompt(plan)
            if prompt is not None and not may_ask:
                raise Denial(DenialKind.APPROVAL_DENIED,
                             f"tool {plan.tool!r} needs a person's approval, which a Run or "
                             "RunToExit call cannot wait for; nothing ran (use Execute: the "
                             "client does when given on_approval)",
                             snapshot.policy.approval_rule(plan))
        except Denial as denial:
            self._audit.denied(principal, call, denial)
            raise
        return Admitted(principal, snapshot, call, plan, layers, prompt)

    async def approve(self, admitted: Admitted,
                      asked: Callable[[Pending], Awaitable[None]]) -> None:
        """Ask a person (``asked`` tells the caller what); returns once approved, raises
        Denial when denied or expired. Cancelling it withdraws the request."""
        key = _key(admitted.principal)
        cap = admitted.snapshot.config.runs.max_pending_approvals_per_principal
        if self._waiting.get(key, 0) >= cap:
            denial = Denial(DenialKind.RESOURCE_EXHAUSTED,
                            f"{admitted.principal.subject} already has {cap} approvals "
                            "pending; retry once one is decided",
                            "runs.max_pending_approvals_per_principal")
            self._audit.denied(admitted.principal, admitted.call, denial)
            raise denial
        pending = await self._approvals.open(admitted.principal, admitted.plan,
                                             admitted.prompt or "")
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            await asked(pending)
            await self._approvals.wait(pending)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    def start(self, admitted: Admitted, detach: bool = False) -> RunEntry:
        """Take a run slot and start the run; raises Denial (audited) at a cap."""
        principal, plan, runs = admitted.principal, admitted.plan, admitted.snapshot.config.runs
        try:
            self._check_serving()  # an approval may have been decided while it stopped
            self._check_caps(principal, runs, detach)
            self._slots.acquire()
        except Denial as denial:
            self._audit.denied(principal, admitted.call, denial)
            raise
        run_id = self._registry.new_id() if self._registry else uuid.uuid4().hex
        spawning = time.monotonic()  # the spawn latency the audit (and metrics) record
        try:
            run = self._spawn(plan, admitted.layers, run_id, principal)
        except (OSError, Denial) as exc:
            self._slots.release()
            if isinstance(exc, Denial):
                raise
            raise Denial(DenialKind.UNAVAILABLE,
                         f"could not start {plan.executable}: {exc.strerror}") from None
        self._audit.started(run_id, principal, plan, time.monotonic() - spawning)
        entry = RunEntry(id=run_id, principal=principal, plan=plan, run=run,
                         replay=Replay(runs.replay_bytes), runs=runs, detached=detach,
                         started_at=self._wall_clock())
        self._entries[run_id] = entry
        self._running.add(run_id)
        self._idle.clear()
        entry.pump = asyncio.get_running_loop().create_task(self._pump(entry))
        return entry

    def left(self, entry: RunEntry, principal: Principal) -> None:
        """The call that started ``entry`` ended: a run not detached ends with it (at once,
        nobody waits for it); a detached one goes on, and so does one handed over to its
        caller (``RunEntry.hand_over``)."""
        if entry.exit is not None or entry.handed_over:
            return
        if entry.detached:
            self._audit.run_detached(entry.id, principal)
        else:
            entry.run.cancel()

    # -- the registry ------------------------------------------------------------------

    def find(self, principal: Principal, run_id: str, runs: RunsConfig) -> RunEntry:
        """The run ``run_id`` if ``principal`` may see it; NOT_FOUND otherwise."""
        entry = self._entries.get(run_id)
        if entry is None or not self._may_see(principal, entry, runs):
            raise Denial(DenialKind.RUN_NOT_FOUND,
                         f"no run {run_id[:40]!r} (unknown, not yours, or past its retention)",
                         "runs.retention")
        return entry

    def visible(self, principal: Principal, runs: RunsConfig) -> list[RunEntry]:
        """The runs ``principal`` may see, oldest first."""
        return [e for e in self._entries.values() if self._may_see(principal, e, runs)]

    def attached(self, entry: RunEntry, principal: Principal) -> None:
        """Record that ``principal`` attached to ``entry``."""
        self._audit.run_attached(entry.id, principal)

    def cancel(self, principal: Principal, run_id: str, runs: RunsConfig) -> None:
        """Stop a run: SIGTERM to its tree, SIGKILL after the tool's kill grace."""
        entry = self.find(principal, run_id, runs)
        if entry.exit is None:
            self._audit.run_cancelled(entry.id, principal)
            entry.let_go()
            entry.run.stop(ExitReason.CANCELLED, f"cancelled by {principal.subject}")

    def signal(self, principal: Principal, run_id: str, sig: int,
               runs: RunsConfig) -> None:
        """Send ``sig`` to a run's process group."""
        if not 0 < sig <= MAX_SIGNAL:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"signal must be between 1 and {MAX_SIGNAL}")
        entry = self.find(principal, run_id, runs)
        if entry.exit is None:
            self._audit.run_signalled(entry.id, principal, sig)
            entry.run.send_signal(sig)

    # -- the daemon's lifecycle -----------------------------------------------------------

    @property
    def active_runs(self) -> int:
        """Runs in progress."""
        return len(self._running)

    def refuse_new(self) -> None:
        """Draining: refuse new calls (and approved ones not started yet); runs go on."""
        self._stopping = True

    def stop_all(self) -> None:
        """Shutdown: refuse new calls and stop every run with DAEMON_STOPPING (SIGTERM, then
        SIGKILL after the tool's kill grace); each reader gets its run's Exit."""
        self._stopping = True
        for run_id in list(self._running):
            self._entries[run_id].let_go()
            self._entries[run_id].run.stop(ExitReason.DAEMON_STOPPING)
        for handle in self._forget.values():
            handle.cancel()
        self._forget.clear()

    async def wait_ended(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every run has ended and been recorded."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- inside ------------------------------------------------------------------------

    def _spawn(self, plan: Plan, layers: Layers | None, run_id: str,
               principal: Principal) -> Run:
        def ended(exit: Exit) -> None:
            self._audit.exited(run_id, principal, exit)
            if run_id in self._running:
                self._running.discard(run_id)
                self._slots.release()
            if not self._running:
                self._idle.set()

        if isinstance(plan, FunctionPlan):
            return FunctionRun(plan, ended)
        assert layers is not None  # computed for every command plan, before any approval
        return CommandRun.start(self._spawner, plan, layers, ended)

    async def _pump(self, entry: RunEntry) -> None:
        """The run's events into its replay buffer, whoever reads them."""
        async for event in entry.run.events():
            if isinstance(event, Output):
                await entry.replay.room()
                entry.replay.append(event)
            else:
                entry.replay.finish(event)
        entry.finished()
        if self._registry is not None:
            self._registry.ended(entry)
        if not self._stopping:
            self._forget[entry.id] = asyncio.get_running_loop().call_later(
                entry.runs.retention, self._forget_entry, entry.id)
            self._retain(entry)

    def _retain(self, entry: RunEntry) -> None:
        """Keep a finished run's output for attachers within RETAINED_BYTES in all: past it
        the oldest finished runs' output goes first (their exit stays until retention)."""
        self._retained[entry.id] = (entry, entry.replay.held_bytes)
        self._retained_bytes += entry.replay.held_bytes
        while self._retained_bytes > RETAINED_BYTES and self._retained:
            oldest, counted = self._retained.pop(next(iter(self._retained)))
            oldest.replay.release()
            self._retained_bytes -= counted

    def _forget_entry(self, run_id: str) -> None:
        self._forget.pop(run_id, None)
        retained = self._retained.pop(run_id, None)
        if retained is not None:
            self._retained_bytes -= retained[1]
        if self._entries.pop(run_id, None) is not None:
            self._audit.run_forgotten(run_id)
            if self._registry is not None:
                self._registry.forgotten(run_id)

    @staticmethod
    def _may_see(principal: Principal, entry: RunEntry, runs: RunsConfig) -> bool:
        return (_key(principal) == _key(entry.principal)
                or any(rule_matches(rule, principal) for rule in runs.operators))

    def _check_caps(self, principal: Principal, runs: RunsConfig, detach: bool) -> None:
        mine = [self._entries[r] for r in self._running
                if _key(self._entries[r].principal) == _key(principal)]
        if len(mine) >= runs.max_running_per_principal:
            raise _cap(f"{principal.subject} already has {len(mine)} runs going",
                       "runs.max_running_per_principal")
        if not detach:
            return
        if sum(e.detached for e in mine) >= runs.max_detached_per_principal:
            raise _cap(f"{principal.subject} already has {runs.max_detached_per_principal} "
                       "detached runs going", "runs.max_detached_per_principal")
        if sum(self._entries[r].detached for r in self._running) >= runs.max_detached:
            raise _cap(f"the daemon already runs its maximum of {runs.max_detached} "
                       "detached runs", "runs.max_detached")

    def _check_serving(self) -> None:
        if self._stopping:
            raise Denial(DenialKind.UNAVAILABLE,
                         "the daemon is draining to stop: it takes no new calls; retry when "
                         "it is back (or on another instance)", "server.drain_timeout")


def _cap(what: str, rule: str) -> Denial:
    return Denial(DenialKind.RESOURCE_EXHAUSTED, f"{what}; retry when one has ended", rule)
