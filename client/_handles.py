"""Handles on runs that go on in the daemon: ``Client.start`` and ``AsyncClient.start``.

A handle is only a run id and a client: the run lives in the daemon, detached from any
stream, so an agent that restarts can get the same handle back from the id alone
(``Client.handle(run_id)``) and read the run again from any offset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from execgate.client._exceptions import ProtocolError
from execgate.client._models import Event, Exited, OutputChunk, RunResult, Started

if TYPE_CHECKING:
    from execgate.client._client import AsyncClient, Client


class Collector:
    """Folds a stream of events into a RunResult."""

    def __init__(self) -> None:
        self.started: Started | None = None
        self.out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.offsets = {"stdout": 0, "stderr": 0}
        """Each stream's offset after the output taken so far (where a reader goes on)."""
        self.exited: Exited | None = None

    def add(self, event: Event) -> None:
        """Take one event (a second Started, from reading the run again, is the same run)."""
        if isinstance(event, Started):
            self.started = self.started or event
        elif isinstance(event, OutputChunk):
            self.out[event.stream].append(event.data)
            self.offsets[event.stream] = event.offset + len(event.data)
        elif isinstance(event, Exited):
            self.exited = event

    def result(self) -> RunResult:
        """The result; raises ProtocolError when the stream lacked its start or exit."""
        if self.started is None or self.exited is None:
            raise ProtocolError("the daemon ended the call without an accepted and an exit")
        return RunResult(run_id=self.started.run_id, plan=self.started.plan,
                         stdout=b"".join(self.out["stdout"]),
                         stderr=b"".join(self.out["stderr"]), exit=self.exited)


class RunHandle:
    """A run going on in the daemon (blocking client)."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self.id = run_id
        """The run's id: enough to find it again, from this process or another."""

    def events(self, stdout_offset: int = 0, stderr_offset: int = 0) -> Iterator[Event]:
        """Started, then the output from these offsets (what the daemon still holds, then
        live), then Exited."""
        return self._client.attach(self.id, stdout_offset=stdout_offset,
                                   stderr_offset=stderr_offset)

    def wait(self) -> RunResult:
        """Wait for the run to end; its whole output, as far as the daemon kept it."""
        collector = Collector()
        for event in self.events():
            collector.add(event)
        return collector.result()

    def signal(self, sig: int) -> None:
        """Send signal ``sig`` to the run's process group."""
        self._client.signal(self.id, sig)

    def cancel(self) -> None:
        """Stop the run: SIGTERM, then SIGKILL after the tool's kill grace."""
        self._client.cancel(self.id)


class AsyncRunHandle:
    """A run going on in the daemon (asyncio client)."""

    def __init__(self, client: AsyncClient, run_id: str) -> None:
        self._client = client
        self.id = run_id
        """The run's id: enough to find it again, from this process or another."""

    def events(self, stdout_offset: int = 0, stderr_offset: int = 0) -> AsyncIterator[Event]:
        """Started, then the output from these offsets, then Exited."""
        return self._client.attach(self.id, stdout_offset=stdout_offset,
                                   stderr_offset=stderr_offset)

    async def wait(self) -> RunResult:
        """Wait for the run to end; its whole output, as far as the daemon kept it."""
        collector = Collector()
        async for event in self.events():
            collector.add(event)
        return collector.result()

    async def signal(self, sig: int) -> None:
        """Send signal ``sig`` to the run's process group."""
        await self._client.signal(self.id, sig)

    async def cancel(self) -> None:
        """Stop the run: SIGTERM, then SIGKILL after the tool's kill grace."""
        await self._client.cancel(self.id)
