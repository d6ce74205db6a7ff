"""ExecService: one tool call, a straight line from the first message to the exit.

identity (interceptor) -> access -> limits -> policy -> sandbox -> stream -> audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from execgate.daemon.access import Access
from execgate.daemon.audit import Audit
from execgate.daemon.auth import current_principal
from execgate.daemon.limits import RunSlots
from execgate.daemon.model import (
    CommandPlan,
    Denial,
    DenialKind,
    Exit,
    Plan,
    ToolCall,
)
from execgate.daemon.policy import Policy
from execgate.daemon.runs import CommandRun, FunctionRun, Run
from execgate.daemon.sandbox import Spawner
from execgate.daemon.services import _convert
from execgate.daemon.services._errors import abort
from execgate.v1 import exec_pb2, exec_pb2_grpc

_MAX_SIGNAL = 64
_PROTOCOL_ERRORS = {
    "start": "a second start on one Execute stream; the run was stopped",
    "stdin": "stdin sent, but start did not set stdin; the run was stopped",
    "signal": f"signal must be between 1 and {_MAX_SIGNAL}; the run was stopped",
}


async def _decoded(requests: AsyncIterator[exec_pb2.ExecuteRequest],
                   ) -> AsyncIterator[exec_pb2.ExecuteRequest]:
    """The caller's messages; one that does not parse (bad UTF-8 in a string, garbage) is the
    caller's error, INVALID_ARGUMENT, not the daemon's."""
    iterator = aiter(requests)
    while True:
        try:
            request = await anext(iterator)
        except StopAsyncIteration:
            return
        except DecodeError as exc:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"not a valid ExecuteRequest: {exc}") from None
        yield request


class ExecService(exec_pb2_grpc.ExecServiceServicer):
    """Runs tool calls over bidirectional streams."""

    def __init__(self, access: Access, policy: Policy, slots: RunSlots, spawner: Spawner,
                 audit: Audit) -> None:
        self._access = access
        self._policy = policy
        self._spawner = spawner
        self._slots = slots
        self._audit = audit
        self._runs: set[Run] = set()

    # Overrides the generated signature: this handler writes with context.write, so that
    # the control task can read the stream while events are written.
    async def Execute(  # type: ignore[override]
        self, request_iterator: AsyncIterator[exec_pb2.ExecuteRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        principal = current_principal.get()
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
            agent_name, agent = self._access.agent_for(principal, call.agent)
            plan = self._policy.plan(agent_name, agent, call)
            self._slots.acquire()
        except Denial as denial:
            self._audit.denied(principal, call, denial)
            await abort(context, denial)
        try:
            run = self._start(plan)
        except Denial as denial:  # a sandbox layer the policy requires is missing
            self._slots.release()
            self._audit.denied(principal, call, denial)
            await abort(context, denial)
        except OSError as exc:
            self._slots.release()
            await abort(context, Denial(DenialKind.UNAVAILABLE,
                                        f"could not start {plan.executable}: {exc.strerror}"))
        run_id = uuid.uuid4().hex
        self._audit.started(run_id, principal, plan)
        self._runs.add(run)
        control = asyncio.create_task(self._control(requests, run, call))
        try:
            await context.write(_convert.accepted(run_id, plan, run.layers))
            async for event in run.events():
                if isinstance(event, Exit):
                    self._audit.exited(run_id, principal, event)
                    if control.done() and isinstance(err := control.exception(), Denial):
                        await abort(context, err)
                    await context.write(_convert.exit_message(event))
                else:
                    await context.write(_convert.output(event))
        finally:
            run.cancel()  # a no-op once the run has exited
            self._runs.discard(run)
            self._slots.release()
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError, Denial):
                await control

    def _start(self, plan: Plan) -> Run:
        if isinstance(plan, CommandPlan):
            return CommandRun.start(self._spawner, plan)
        return FunctionRun(plan)

    @staticmethod
    async def _control(requests: AsyncIterator[exec_pb2.ExecuteRequest], run: Run,
                       call: ToolCall) -> None:
        """The caller's later messages: stdin, stdin close, signals.

        A second start, stdin nobody announced, a bad signal or an unparsable message: the
        caller is confused, so nothing it sends can be trusted to mean what it thinks. The run
        is stopped and the Denial ends the call.
        """
        try:
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "stdin" and call.stdin:
                    await run.write_stdin(request.stdin)
                elif kind == "close_stdin":
                    run.close_stdin()
                elif kind == "signal" and 0 < request.signal.signal <= _MAX_SIGNAL:
                    run.send_signal(request.signal.signal)
                else:
                    raise Denial(DenialKind.INVALID_ARGUMENT, _PROTOCOL_ERRORS.get(
                        kind or "", "a message Execute does not understand"))
        except Denial:
            run.cancel()
            raise
        run.close_stdin()

    @property
    def active_runs(self) -> int:
        """Runs in progress."""
        return len(self._runs)

    def cancel_all(self) -> None:
        """Shutdown: kill every run in progress."""
        for run in list(self._runs):
            run.cancel()
