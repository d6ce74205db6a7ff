"""ExecService: one tool call, a straight line from the first message to the exit.

identity (interceptor) -> rate limit -> access -> policy -> approval -> run slot -> sandbox
-> stream, each step audited. Run slots are taken after approval, so that a call waiting
minutes for a person holds no slot; a slot is given back when its run has ended (not when
its caller left), and that end is audited whether or not anyone still listens.

The caller's stream is read by a task of its own for the whole call. That task is never
cancelled: grpc.aio leaks native memory for a read cancelled in flight (grpc/grpc#43360).
It ends by itself when the caller half-closes or when the call finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
import uuid
from collections.abc import AsyncIterator

import grpc
import structlog
from google.protobuf.message import DecodeError

from execgate.daemon.approvals import Approvals, Pending
from execgate.daemon.audit import Audit
from execgate.daemon.auth import current_principal
from execgate.daemon.limits import RunSlots
from execgate.daemon.model import (
    CommandPlan,
    Denial,
    DenialKind,
    Exit,
    ExitReason,
    FunctionPlan,
    Plan,
    Principal,
    ToolCall,
)
from execgate.daemon.runs import CommandRun, FunctionRun, OnExit, Run
from execgate.daemon.sandbox import Layers, Spawner
from execgate.daemon.services import _convert
from execgate.daemon.services._errors import abort
from execgate.daemon.snapshot import Current
from execgate.v1 import exec_pb2, exec_pb2_grpc

_MAX_SIGNAL = 64
_PROTOCOL_ERRORS = {
    "start": "a second start on one Execute stream; the run was stopped",
    "stdin": "stdin sent, but start did not set stdin; the run was stopped",
    "signal": f"signal must be between 1 and {_MAX_SIGNAL}; the run was stopped",
}
MAX_EARLY_STDIN = 4 * 1024 * 1024
"""stdin held while a call waits for approval; more is a protocol error."""
log = structlog.get_logger()


async def _decoded(requests: AsyncIterator[exec_pb2.ExecuteRequest],
                   ) -> AsyncIterator[exec_pb2.ExecuteRequest]:
    """The caller's messages; one that does not parse (bad UTF-8 in a string, garbage) is the
    caller's error, INVALID_ARGUMENT, not the daemon's."""
    iterator = aiter(requests)
    while True:
        try:
            request = await anext(iterator)
        except (StopAsyncIteration, grpc.aio.UsageError):  # half-closed, or the call is over
            return
        except DecodeError as exc:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"not a valid ExecuteRequest: {exc}") from None
        yield request


class _Control:
    """The caller's messages after start, for the whole call: approval decisions while it
    waits, then stdin, stdin close and signals for the run. stdin that arrives before the
    run exists is held (bounded) and handed over when it starts."""

    def __init__(self, call: ToolCall, principal: Principal, approvals: Approvals) -> None:
        self._call = call
        self._principal = principal
        self._approvals = approvals
        self.pending: Pending | None = None
        self._run: Run | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._early_closed = False
        self._signals: list[int] = []

    async def attach(self, run: Run) -> None:
        """The run started: give it what came early."""
        self._run = run
        for chunk in self._early:
            await run.write_stdin(chunk)
        if self._early_closed:
            run.close_stdin()
        self._early.clear()

    async def read(self, requests: AsyncIterator[exec_pb2.ExecuteRequest]) -> None:
        """Serve the caller's stream until it ends; raises Denial on a protocol error."""
        try:
            async for request in requests:
                await self._one(request)
        except Denial:
            if self._run is not None:
                self._run.cancel()
            raise
        if self._run is not None:
            self._run.close_stdin()
        else:
            self._early_closed = True

    async def _one(self, request: exec_pb2.ExecuteRequest) -> None:
        kind = request.WhichOneof("request")
        if kind == "approval":
            decision = request.approval
            with contextlib.suppress(Denial):  # refused and audited; the request stays open
                self._approvals.decide(decision.approval_id, decision.approve, decision.reason,
                                       decision.plan_digest, self._principal,
                                       via_stream=True, own=self.pending)
        elif kind == "stdin" and self._call.stdin:
            if self._run is not None:
                await self._run.write_stdin(request.stdin)
                return
            self._early_bytes += len(request.stdin)
            if self._early_bytes > MAX_EARLY_STDIN:
                raise Denial(DenialKind.INVALID_ARGUMENT,
                             f"more than {MAX_EARLY_STDIN} bytes of stdin before the run "
                             "started; send stdin after accepted")
            self._early.append(request.stdin)
        elif kind == "close_stdin":
            if self._run is not None:
                self._run.close_stdin()
            else:
                self._early_closed = True
        elif kind == "signal" and 0 < request.signal.signal <= _MAX_SIGNAL:
            if self._run is not None:
                self._run.send_signal(request.signal.signal)
        else:
            raise Denial(DenialKind.INVALID_ARGUMENT, _PROTOCOL_ERRORS.get(
                kind or "", "a message Execute does not understand"))


class ExecService(exec_pb2_grpc.ExecServiceServicer):
    """Runs tool calls over bidirectional streams."""

    def __init__(self, current: Current, slots: RunSlots, spawner: Spawner,
                 approvals: Approvals, audit: Audit) -> None:
        self._current = current
        self._slots = slots
        self._spawner = spawner
        self._approvals = approvals
        self._audit = audit
        self._runs: dict[str, Run] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # Overrides the generated signature: this handler writes with context.write, so that
    # the control task can read the stream while events are written.
    async def Execute(  # type: ignore[override]
        self, request_iterator: AsyncIterator[exec_pb2.ExecuteRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            await self._execute(request_iterator, context)
        except grpc.aio.AbortError:  # the call already ended with its status
            raise
        except Denial as denial:
            await abort(context, denial)
        except Exception as exc:
            if context.done():  # gRPC ended the call first (a message over the size limit, a
                # caller gone): its status is sent, and answering again is what failed
                log.debug("call.already_ended", error=type(exc).__name__)
                return
            # A bug: the caller gets a status that says so, never its text.
            incident = uuid.uuid4().hex[:12]
            log.error("call.failed", incident=incident, traceback=traceback.format_exc())
            await abort(context, Denial(
                DenialKind.UNAVAILABLE, f"the daemon failed while handling this call "
                f"(incident {incident} in its log); retry, or report the incident"))

    async def _execute(self, request_iterator: AsyncIterator[exec_pb2.ExecuteRequest],
                       context: grpc.aio.ServicerContext) -> None:
        principal = current_principal.get()
        snapshot = self._current.get()  # this call's policy, from its first step to its end
        requests = _decoded(request_iterator)
        try:
            first = await anext(requests, None)
        except Denial as denial:
            await abort(context, denial)
        if first is None or first.WhichOneof("request") != "start":
            await abort(context, Denial(DenialKind.INVALID_ARGUMENT,
                                        "the first message of Execute must be start"))
        call = _convert.tool_call(first.start)
        try:
            self._check_serving()
            snapshot.limiter.check(principal)
            agent_name, agent = snapshot.access.agent_for(principal, call.agent)
            plan = snapshot.policy.plan(agent_name, agent, call)
            # Before asking a human: a call the sandbox would refuse is refused now.
            layers = self._spawner.layers(plan) if isinstance(plan, CommandPlan) else None
            prompt = snapshot.policy.approval_prompt(plan)
        except Denial as denial:
            self._audit.denied(principal, call, denial)
            await abort(context, denial)
        control = _Control(call, principal, self._approvals)
        reader = asyncio.create_task(control.read(requests))
        reader.add_done_callback(_settled)
        try:
            if prompt is not None:
                await self._ask(context, control, reader, principal, plan, prompt, layers)
            await self._run(context, control, reader, principal, call, plan, layers)
        except Denial as denial:
            await abort(context, denial)

    async def _ask(self, context: grpc.aio.ServicerContext, control: _Control,
                   reader: asyncio.Task[None], principal: Principal, plan: Plan, prompt: str,
                   layers: Layers | None) -> None:
        """The policy's ask: the call waits for a decision; raises Denial unless approved.
        A caller that breaks the protocol meanwhile ends the wait (and the request)."""
        pending = self._approvals.open(principal, plan, prompt)
        control.pending = pending
        await context.write(exec_pb2.ExecuteResponse(
            approval_request=_convert.approval_request(pending, layers)))
        decision = asyncio.ensure_future(self._approvals.wait(pending))
        try:
            await asyncio.wait({decision, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not decision.done() and reader.done() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            await decision
        finally:
            if not decision.done():  # the caller went away or broke the protocol: withdraw
                decision.cancel()
                with contextlib.suppress(asyncio.CancelledError, Denial):
                    await decision

    async def _run(self, context: grpc.aio.ServicerContext, control: _Control,
                   reader: asyncio.Task[None], principal: Principal, call: ToolCall,
                   plan: Plan, layers: Layers | None) -> None:
        try:
            self._check_serving()  # an approval may have been decided while it stopped
            self._slots.acquire()
        except Denial as denial:
            self._audit.denied(principal, call, denial)
            raise
        run_id = uuid.uuid4().hex
        try:
            run = self._start(plan, layers, self._on_exit(run_id, principal))
        except (OSError, Denial) as exc:
            self._slots.release()
            if isinstance(exc, Denial):
                raise
            raise Denial(DenialKind.UNAVAILABLE,
                         f"could not start {plan.executable}: {exc.strerror}") from None
        self._audit.started(run_id, principal, plan)
        self._runs[run_id] = run
        self._idle.clear()
        try:
            await control.attach(run)
            await context.write(_convert.accepted(run_id, plan, run.layers))
            async for event in run.events():
                if isinstance(event, Exit):
                    if reader.done() and isinstance(err := reader.exception(), Denial):
                        raise err
                    await context.write(_convert.exit_message(event))
                else:
                    await context.write(_convert.output(event))
        finally:
            run.cancel()  # a no-op once the run has exited

    def _start(self, plan: Plan, layers: Layers | None, on_exit: OnExit) -> Run:
        if isinstance(plan, FunctionPlan):
            return FunctionRun(plan, on_exit)
        assert layers is not None  # computed for every command plan, before any approval
        return CommandRun.start(self._spawner, plan, layers, on_exit)

    def _on_exit(self, run_id: str, principal: Principal) -> OnExit:
        def ended(exit: Exit) -> None:
            self._audit.exited(run_id, principal, exit)
            if self._runs.pop(run_id, None) is not None:
                self._slots.release()
            if not self._runs:
                self._idle.set()
        return ended

    def _check_serving(self) -> None:
        if self._stopping:
            raise Denial(DenialKind.UNAVAILABLE,
                         "the daemon is draining to stop: it takes no new calls; retry when "
                         "it is back (or on another instance)", "server.drain_timeout")

    @property
    def active_runs(self) -> int:
        """Runs in progress."""
        return len(self._runs)

    def refuse_new(self) -> None:
        """Draining: refuse new calls (and approved ones not started yet); runs go on."""
        self._stopping = True

    def stop_all(self) -> None:
        """Shutdown: refuse new calls and stop every run with DAEMON_STOPPING (SIGTERM, then
        SIGKILL after the tool's kill grace); each caller gets its run's Exit."""
        self._stopping = True
        for run in list(self._runs.values()):
            run.stop(ExitReason.DAEMON_STOPPING)

    async def wait_ended(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every run has ended and been recorded."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _settled(reader: asyncio.Task[None]) -> None:
    """The caller's stream, read to its end after the call may have finished: what it ended
    with was already acted on (or no longer matters)."""
    if not reader.cancelled():
        reader.exception()
