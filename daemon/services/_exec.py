"""ExecService: gRPC messages in and out of the call pipeline (``execgate.daemon.calls``).

Execute admits, approves and starts a call through the pipeline and streams its run; Run
does the same for a call given whole in one request (no approval, stdin up front), and
RunToExit answers such a call once (``_replies``: how each sends the events);
AttachRun streams a run again from offsets; ListRuns, CancelRun and SignalRun act on the
registry. Nothing here decides anything: the pipeline does, and every refusal comes back as
a Denial through the one status table.

The caller's stream is read by a task of its own for the whole call. That task is never
cancelled: grpc.aio leaks native memory for a read cancelled in flight (grpc/grpc#43360).
It ends by itself when the caller half-closes or when the call finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc._cython import cygrpc

from execgate.daemon.approvals import Approvals, Pending
from execgate.daemon.audit import Audit
from execgate.daemon.auth import current_principal
from execgate.daemon.calls import MAX_SIGNAL, Admitted, Calls
from execgate.daemon.hops import is_hop
from execgate.daemon.limits import RunSlots
from execgate.daemon.model import Denial, DenialKind, Exit, Principal, ToolCall
from execgate.daemon.runs import Run
from execgate.daemon.sandbox import Spawner
from execgate.daemon.services import _convert
from execgate.daemon.services._errors import abort
from execgate.daemon.services._replies import CollectedReplies, ExecuteReplies, RunReplies
from execgate.daemon.snapshot import Current
from execgate.v1 import exec_pb2, exec_pb2_grpc

if TYPE_CHECKING:  # Redis's client is imported only in a fleet
    from execgate.daemon.cluster.runs import FleetRuns

T = TypeVar("T")
_PROTOCOL_ERRORS = {
    "start": "a second start on one Execute stream; the run was stopped",
    "stdin": "stdin sent, but start did not set stdin; the run was stopped",
    "signal": f"signal must be between 1 and {MAX_SIGNAL}; the run was stopped",
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
        self._feeding: asyncio.Task[None] | None = None

    def attach(self, run: Run) -> None:
        """The run started: what came early goes to it in a task of its own, which later
        stdin waits for (a command that reads its stdin late must not hold up its output)."""
        self._run = run
        if self._early or self._early_closed:
            self._feeding = asyncio.create_task(self._feed(run, self._early, self._early_closed))
            self._feeding.add_done_callback(_settled)
            self._early = []

    @staticmethod
    async def _feed(run: Run, chunks: list[bytes], closed: bool) -> None:
        for chunk in chunks:
            await run.write_stdin(chunk)
        if closed:
            run.close_stdin()

    def given(self, stdin: bytes) -> None:
        """A Run's or RunToExit's: its whole stdin, written once the run starts, then closed
        (a call without stdin has none to close: its stdin is /dev/null)."""
        if stdin:
            self._early, self._early_closed = [stdin], True

    async def _stdin(self) -> Run:
        """The run, once what came early has been written to it."""
        assert self._run is not None
        if self._feeding is not None:
            await self._feeding
        return self._run

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
            (await self._stdin()).close_stdin()
        else:
            self._early_closed = True

    async def _one(self, request: exec_pb2.ExecuteRequest) -> None:
        kind = request.WhichOneof("request")
        if kind == "approval":
            decision = request.approval
            with contextlib.suppress(Denial):  # refused and audited; the request stays open
                await self._approvals.decide(
                    decision.approval_id, decision.approve, decision.reason,
                    decision.plan_digest, self._principal, via_stream=True, own=self.pending)
        elif kind == "stdin" and self._call.stdin:
            if self._run is not None:
                await (await self._stdin()).write_stdin(request.stdin)
                return
            self._early_bytes += len(request.stdin)
            if self._early_bytes > MAX_EARLY_STDIN:
                raise Denial(DenialKind.INVALID_ARGUMENT,
                             f"more than {MAX_EARLY_STDIN} bytes of stdin before the run "
                             "started; send stdin after accepted")
            self._early.append(request.stdin)
        elif kind == "close_stdin":
            if self._run is not None:
                (await self._stdin()).close_stdin()
            else:
                self._early_closed = True
        elif kind == "signal" and 0 < request.signal.signal <= MAX_SIGNAL:
            if self._run is not None:
                self._run.send_signal(request.signal.signal)
        else:
            raise Denial(DenialKind.INVALID_ARGUMENT, _PROTOCOL_ERRORS.get(
                kind or "", "a message Execute does not understand"))


class ExecService(exec_pb2_grpc.ExecServiceServicer):
    """Runs tool calls over bidirectional streams, and serves the runs they leave."""

    def __init__(self, current: Current, slots: RunSlots, spawner: Spawner,
                 approvals: Approvals, audit: Audit, fleet: FleetRuns | None = None) -> None:
        self._current = current
        self._calls = Calls(slots, spawner, approvals, audit, registry=fleet)
        self._approvals = approvals
        self._fleet = fleet
        """In a fleet: the runs other hosts hold, reached through them."""

    # Overrides the generated signature: this handler writes with context.write, so that
    # the control task can read the stream while events are written.
    async def Execute(  # type: ignore[override]
        self, request_iterator: AsyncIterator[exec_pb2.ExecuteRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async def execute() -> None:
            requests = _decoded(request_iterator)
            first = await anext(requests, None)
            if first is None or first.WhichOneof("request") != "start":
                raise Denial(DenialKind.INVALID_ARGUMENT,
                             "the first message of Execute must be start")
            await self._execute(first.start, requests, ExecuteReplies(context))
        await _answered(context, execute())

    async def Run(  # type: ignore[override]
        self, request: exec_pb2.RunRequest, context: grpc.aio.ServicerContext,
    ) -> None:
        await _answered(context, self._execute_whole(request, RunReplies(context)))

    async def RunToExit(self, request: exec_pb2.RunRequest,
                        context: grpc.aio.ServicerContext) -> exec_pb2.RunToExitResponse:
        replies = CollectedReplies(context)
        await _answered(context, self._execute_whole(request, replies))
        return replies.response()

    async def AttachRun(  # type: ignore[override]
        self, request: exec_pb2.AttachRunRequest, context: grpc.aio.ServicerContext,
    ) -> None:
        await _answered(context, self._attach(request, context))

    async def ListRuns(self, request: exec_pb2.ListRunsRequest,
                       context: grpc.aio.ServicerContext) -> exec_pb2.ListRunsResponse:
        async def listed() -> exec_pb2.ListRunsResponse:
            principal = current_principal.get()
            runs = self._calls.visible(principal, self._current.get().config.runs)
            listed = [_convert.run_info(e) for e in runs]
            if self._fleet is not None and not is_hop(context.invocation_metadata() or ()):
                listed += await self._fleet.listed(principal)
                listed.sort(key=lambda info: info.started_at.ToNanoseconds())
            return exec_pb2.ListRunsResponse(runs=listed)
        return await _answered(context, listed())

    async def CancelRun(self, request: exec_pb2.CancelRunRequest,
                        context: grpc.aio.ServicerContext) -> exec_pb2.CancelRunResponse:
        async def cancelled() -> exec_pb2.CancelRunResponse:
            principal, runs = current_principal.get(), self._current.get().config.runs
            try:
                self._calls.cancel(principal, request.run_id, runs)
            except Denial as denial:
                await self._elsewhere(denial, context).cancel(principal, request, runs)
            return exec_pb2.CancelRunResponse()
        return await _answered(context, cancelled())

    async def SignalRun(self, request: exec_pb2.SignalRunRequest,
                        context: grpc.aio.ServicerContext) -> exec_pb2.SignalRunResponse:
        async def signalled() -> exec_pb2.SignalRunResponse:
            principal, runs = current_principal.get(), self._current.get().config.runs
            try:
                self._calls.signal(principal, request.run_id, request.signal, runs)
            except Denial as denial:
                await self._elsewhere(denial, context).signal(principal, request, runs)
            return exec_pb2.SignalRunResponse()
        return await _answered(context, signalled())

    async def _execute_whole(self, request: exec_pb2.RunRequest,
                             replies: ExecuteReplies) -> None:
        """A Run or RunToExit: the call given whole in one request, stdin included."""
        if request.start.detach:
            raise Denial(DenialKind.INVALID_ARGUMENT, "a Run or RunToExit cannot detach; "
                         "detach on an Execute stream")
        start = exec_pb2.StartCall()
        start.CopyFrom(request.start)
        start.stdin = bool(request.stdin)
        await self._execute(start, None, replies, request.stdin)

    async def _execute(self, start: exec_pb2.StartCall,
                       requests: AsyncIterator[exec_pb2.ExecuteRequest] | None,
                       replies: ExecuteReplies, stdin: bytes = b"") -> None:
        """The call ``start`` begins, the caller's later ``requests`` read by a task of their
        own for the whole call; without any (a Run), ``stdin`` is the command's whole stdin."""
        principal = current_principal.get()
        snapshot = self._current.get()  # this call's policy, from its first step to its end
        call = _convert.tool_call(start)
        admitted = await self._calls.admit(principal, snapshot, call, replies.may_ask)
        control = _Control(call, principal, self._approvals)
        reader = None
        if requests is None:
            control.given(stdin)
        else:
            reader = asyncio.create_task(control.read(requests))
            reader.add_done_callback(_settled)
        if admitted.prompt is not None:
            assert reader is not None  # only a caller with a stream can be asked
            await self._ask(replies.context, control, reader, admitted)
        entry = self._calls.start(admitted, detach=start.detach)
        try:
            if self._fleet is not None:  # its record exists before its id is told
                await self._fleet.registered(entry)
            control.attach(entry.run)
            await replies.accepted(entry)
            async with contextlib.aclosing(entry.read(
                    first_heartbeat=replies.hold, heartbeat=replies.heartbeat)) as events:
                async for event in events:
                    if isinstance(event, Exit) and reader is not None and reader.done() and (
                            isinstance(err := reader.exception(), Denial)):
                        raise err
                    if not await replies.event(event):
                        break
        finally:
            self._calls.left(entry, principal)

    async def _ask(self, context: grpc.aio.ServicerContext, control: _Control,
                   reader: asyncio.Task[None], admitted: Admitted) -> None:
        """The policy's ask: the call waits for a decision; raises Denial unless approved.
        A caller that breaks the protocol meanwhile ends the wait (and the request)."""
        async def asked(pending: Pending) -> None:
            control.pending = pending
            await context.write(exec_pb2.ExecuteResponse(
                approval_request=_convert.approval_request(pending, admitted.layers)))

        decision = asyncio.ensure_future(self._calls.approve(admitted, asked))
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

    async def _attach(self, request: exec_pb2.AttachRunRequest,
                      context: grpc.aio.ServicerContext) -> None:
        principal, runs = current_principal.get(), self._current.get().config.runs
        try:
            entry = self._calls.find(principal, request.run_id, runs)
        except Denial as denial:
            async for response in self._elsewhere(denial, context).attach(
                    principal, request, runs):
                await context.write(response)
            return
        self._calls.attached(entry, principal)
        await context.write(exec_pb2.AttachRunResponse(
            accepted=_convert.accepted(entry.id, entry.plan, entry.layers)))
        async with contextlib.aclosing(entry.read(request.stdout_offset,
                                                  request.stderr_offset)) as events:
            async for event in events:
                await context.write(_convert.attach_response(event))

    def _elsewhere(self, denial: Denial, context: grpc.aio.ServicerContext) -> FleetRuns:
        """The fleet, to look for a run this host does not hold; re-raises ``denial`` when
        there is none to ask, or when this call is itself a hop (never forwarded twice)."""
        if (self._fleet is None or denial.kind is not DenialKind.RUN_NOT_FOUND
                or is_hop(context.invocation_metadata() or ())):
            raise denial
        return self._fleet

    @property
    def active_runs(self) -> int:
        """Runs in progress."""
        return self._calls.active_runs

    def refuse_new(self) -> None:
        """Draining: refuse new calls (and approved ones not started yet); runs go on."""
        self._calls.refuse_new()

    def stop_all(self) -> None:
        """Shutdown: refuse new calls and stop every run with DAEMON_STOPPING."""
        self._calls.stop_all()

    async def wait_ended(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every run has ended and been recorded."""
        return await self._calls.wait_ended(timeout)


async def _answered(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """``work``'s result; a Denial becomes its status, and a bug a status that says so
    (never its text): nothing reaches the caller as UNKNOWN."""
    try:
        return await work
    except grpc.aio.AbortError:  # the call already ended with its status
        raise
    except Denial as denial:
        await abort(context, denial)
    except Exception as exc:
        if context.done() or isinstance(exc, cygrpc.ExecuteBatchError):
            # gRPC ended the call first (a message over the size limit, a caller gone): its
            # status is sent, and answering again is what failed. A write to a call its
            # caller has just cancelled fails so before context.done() says it is over.
            log.debug("call.already_ended", error=type(exc).__name__)
            raise asyncio.CancelledError from None
        incident = uuid.uuid4().hex[:12]
        log.error("call.failed", incident=incident, traceback=traceback.format_exc())
        await abort(context, Denial(
            DenialKind.UNAVAILABLE, f"the daemon failed while handling this call "
            f"(incident {incident} in its log); retry, or report the incident"))


def _settled(reader: asyncio.Task[None]) -> None:
    """The caller's stream, read to its end after the call may have finished: what it ended
    with was already acted on (or no longer matters)."""
    if not reader.cancelled():
        reader.exception()
