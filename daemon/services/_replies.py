"""How a call's events reach its caller, one way per RPC: Execute's one message per event,
Run's batches, RunToExit's one response.

The pipeline is the same for all three (``ExecService._execute``); what differs is whether
the caller can be asked to approve, how ``accepted`` and the events are sent, and whether
the call may answer before the run's exit and hand the run over to its caller.
"""

from __future__ import annotations

import time

import grpc

from execgate.daemon.calls import RunEntry
from execgate.daemon.model import Output, RunEvent, Stream
from execgate.daemon.replay import Heartbeat
from execgate.daemon.services import _convert
from execgate.v1 import exec_pb2

ACCEPTED_HOLD = 0.05
"""Seconds a Run's ``accepted`` waits for the run's first event; a run quiet for longer has
its id sent then, with a heartbeat."""
COLLECT_SECONDS = 1.0
"""How long a RunToExit call waits for its run's exit, from its start, before handing the
run over."""
COLLECT_BYTES = 1024 * 1024
"""Bytes of events a RunToExit response carries before the run is handed over (a response
holds at most this plus one replay message and the exit: well under gRPC's 4 MiB)."""


class ExecuteReplies:
    """An Execute caller's: one message each, as they come."""

    may_ask = True
    """Whether the caller can be asked to approve the call (it can answer on its stream)."""
    hold: float | None = None
    """Seconds ``accepted`` waits for the next event, to go with it."""
    heartbeat: float | None = None
    """Seconds between heartbeats of a quiet run; None: the policy's heartbeat_interval."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context

    async def accepted(self, entry: RunEntry) -> None:
        """The run started."""
        await self.context.write(exec_pb2.ExecuteResponse(
            accepted=_convert.accepted(entry.id, entry.plan, entry.layers)))

    async def event(self, event: RunEvent | Heartbeat) -> bool:
        """One of the run's events; False when the call answers now and the run goes on
        (handed over to its caller)."""
        await self.context.write(_convert.execute_response(event))
        return True


class RunReplies(ExecuteReplies):
    """A Run caller's: nobody to ask, and ``accepted`` waits a little for the next event, so
    that a short command's call is one message (each costs both ends a wake-up and a send)."""

    may_ask = False
    hold = ACCEPTED_HOLD

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        super().__init__(context)
        self._held: list[exec_pb2.ExecuteResponse] = []

    async def accepted(self, entry: RunEntry) -> None:
        self._held.append(exec_pb2.ExecuteResponse(
            accepted=_convert.accepted(entry.id, entry.plan, entry.layers)))

    async def event(self, event: RunEvent | Heartbeat) -> bool:
        events, self._held = [*self._held, _convert.execute_response(event)], []
        await self.context.write(exec_pb2.RunResponse(events=events))
        return True


class CollectedReplies(ExecuteReplies):
    """A RunToExit caller's: every event kept for one response, sent when the run exits, or
    when COLLECT_SECONDS have passed or COLLECT_BYTES of output are kept: then the run is
    handed over and the caller reads on with AttachRun."""

    may_ask = False
    hold = COLLECT_SECONDS  # a quiet run is looked at again then,
    heartbeat = COLLECT_SECONDS / 4  # and one that went quiet after some output this often

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        super().__init__(context)
        self.events: list[exec_pb2.ExecuteResponse] = []
        self.continued = False
        """The run goes on past ``events``."""
        self._entry: RunEntry | None = None
        self._offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._bytes = 0
        self._until = 0.0

    def response(self) -> exec_pb2.RunToExitResponse:
        """The call's answer."""
        return exec_pb2.RunToExitResponse(events=self.events, continued=self.continued)

    async def accepted(self, entry: RunEntry) -> None:
        self._entry = entry
        self._until = time.monotonic() + COLLECT_SECONDS
        self._keep(exec_pb2.ExecuteResponse(
            accepted=_convert.accepted(entry.id, entry.plan, entry.layers)))

    async def event(self, event: RunEvent | Heartbeat) -> bool:
        assert self._entry is not None
        if isinstance(event, Output):
            self._offsets[event.stream] = event.offset + len(event.data)
        if not isinstance(event, Heartbeat):  # the answer itself says the run is alive
            self._keep(_convert.execute_response(event))
        if (self._entry.exit is not None  # its exit is next: no need to hand it over
                or (self._bytes < COLLECT_BYTES and time.monotonic() < self._until)):
            return True
        self._entry.hand_over(self._offsets[Stream.STDOUT], self._offsets[Stream.STDERR])
        self.continued = True
        return False

    def _keep(self, response: exec_pb2.ExecuteResponse) -> None:
        self.events.append(response)
        self._bytes += response.ByteSize()
