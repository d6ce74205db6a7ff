"""One run's lifecycle: output pump, output cap, deadline, stdin, signals, cancel, reap.

Output is read straight from the pipes with ``add_reader`` as it arrives and queued for the
caller; when more than ``HIGH_WATER`` bytes wait for a slow caller the pipes are not read,
so the command blocks on its own writes instead of the daemon buffering. Past the output
limit nothing is buffered either: bytes are read, counted as dropped, and the run is stopped.
The exit status comes from the child's pidfd, so no thread waits per child and ``wait4``
supplies the rusage.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

from execgate.daemon.model import Exit, ExitReason, FunctionPlan, Limits, Output, RunEvent, Stream
from execgate.daemon.sandbox import Child, ExitStatus
from execgate.daemon.tools import ToolError, run_function

CHUNK = 64 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
EOF_GRACE = 0.5
"""Seconds to wait for end of output once the command's process group is gone: a process
that escaped the group may hold a pipe open, and must not hold the call open with it."""

Clock = Callable[[], float]


class CommandRun:
    """A running command; ``events()`` yields its output and then exactly one Exit."""

    def __init__(self, child: Child, limits: Limits, clock: Clock = time.monotonic) -> None:
        self._loop = asyncio.get_running_loop()
        self._child = child
        self._limits = limits
        self._clock = clock
        self._started = clock()
        self._queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._queued = 0
        self._paused = False
        self._discard = False
        self._streams = {child.stdout: Stream.STDOUT, child.stderr: Stream.STDERR}
        self._offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._dropped = 0
        self._status: ExitStatus | None = None
        self._stop_reason: ExitReason | None = None
        self._finished = False
        self._stdin = child.stdin
        for fd in self._streams:
            self._loop.add_reader(fd, self._on_readable, fd)
        self._loop.add_reader(child.pidfd, self._on_exit)
        self._timers = [self._loop.call_later(limits.timeout, self._stop, ExitReason.TIMEOUT)]

    # -- the caller's side -------------------------------------------------------------

    async def events(self) -> AsyncIterator[RunEvent]:
        """Output chunks as they arrive, then the Exit."""
        while True:
            event = await self._queue.get()
            if isinstance(event, Exit):
                yield event
                return
            self._queued -= len(event.data)
            if self._paused and self._queued < LOW_WATER:
                self._resume()
            yield event

    async def write_stdin(self, data: bytes) -> None:
        """Write to the command's stdin, waiting while its pipe is full."""
        view = memoryview(data)
        while view and self._stdin is not None:
            try:
                view = view[os.write(self._stdin, view):]
            except BlockingIOError:
                await self._writable(self._stdin)
            except OSError:  # the command closed its stdin: what it did not read is moot
                self.close_stdin()

    def close_stdin(self) -> None:
        """End of file on the command's stdin."""
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None

    def send_signal(self, sig: int) -> None:
        """Signal the command's process group, as the caller asked."""
        if self._status is None:
            self._child.signal_group(sig)

    def cancel(self) -> None:
        """The caller is gone: kill the group now; reaping goes on without a reader."""
        self._discard = True
        self._resume()
        self._stop(ExitReason.CANCELLED)

    # -- the pipes' and the child's side ------------------------------------------------

    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(fd)
            self._maybe_finish()
            return
        stream = self._streams[fd]
        sent = self._offsets[Stream.STDOUT] + self._offsets[Stream.STDERR]
        keep = data[: max(0, self._limits.output_limit_bytes - sent)]
        if keep:
            self._emit(Output(stream, self._offsets[stream], keep))
            self._offsets[stream] += len(keep)
        if len(keep) < len(data):
            self._dropped += len(data) - len(keep)
            self._stop(ExitReason.OUTPUT_LIMIT)

    def _emit(self, event: Output) -> None:
        if self._discard:
            return
        self._queue.put_nowait(event)
        self._queued += len(event.data)
        if self._queued >= HIGH_WATER and not self._paused:
            self._paused = True
            for fd in self._streams:
                self._loop.remove_reader(fd)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            for fd in self._streams:
                self._loop.add_reader(fd, self._on_readable, fd)

    def _close_stream(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        del self._streams[fd]
        os.close(fd)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._child.pidfd)
        self._status = self._child.reap()
        # The job ends with its leader: whatever it left behind in its group goes too.
        self._child.signal_group(signal.SIGKILL)
        for timer in self._timers:
            timer.cancel()
        self._timers = [self._loop.call_later(EOF_GRACE, self._give_up_on_output)]
        self._maybe_finish()

    def _give_up_on_output(self) -> None:
        if self._paused:  # a slow caller, not a stuck pipe: nothing may be lost
            self._timers = [self._loop.call_later(EOF_GRACE, self._give_up_on_output)]
            return
        for fd in list(self._streams):
            self._close_stream(fd)
        self._maybe_finish()

    def _stop(self, reason: ExitReason) -> None:
        if self._status is not None or self._stop_reason is not None:
            return
        self._stop_reason = reason
        self.close_stdin()
        if reason is ExitReason.CANCELLED:
            self._child.signal_group(signal.SIGKILL)
            return
        self._child.signal_group(signal.SIGTERM)
        self._timers.append(self._loop.call_later(
            self._limits.kill_grace, self._child.signal_group, signal.SIGKILL))

    def _maybe_finish(self) -> None:
        if self._finished or self._status is None or self._streams:
            return
        self._finished = True
        for timer in self._timers:
            timer.cancel()
        self.close_stdin()
        status = self._status
        if self._stop_reason is not None:
            reason = self._stop_reason
        else:
            reason = ExitReason.SIGNALED if status.signal else ExitReason.EXITED
        self._queue.put_nowait(Exit(
            reason=reason, exit_code=status.exit_code, signal=status.signal,
            message=_REASON_TEXT.get(reason, "").format(limits=self._limits),
            wall_time=self._clock() - self._started, user_time=status.user_time,
            system_time=status.system_time, max_rss_bytes=status.max_rss_bytes,
            stdout_bytes=self._offsets[Stream.STDOUT], stderr_bytes=self._offsets[Stream.STDERR],
            dropped_bytes=self._dropped))

    async def _writable(self, fd: int) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_writer(fd)


_REASON_TEXT = {
    ExitReason.TIMEOUT: "stopped at its deadline of {limits.timeout:g}s",
    ExitReason.OUTPUT_LIMIT: "stopped when its output passed {limits.output_limit_bytes} bytes",
    ExitReason.CANCELLED: "cancelled by the caller",
}


class FunctionRun:
    """A built-in function tool call; same events as a command."""

    def __init__(self, plan: FunctionPlan, clock: Clock = time.monotonic) -> None:
        self._plan = plan
        self._clock = clock

    async def events(self) -> AsyncIterator[RunEvent]:
        """The tool's result as stdout chunks, then the Exit."""
        started = self._clock()
        try:
            data = await asyncio.wait_for(asyncio.to_thread(run_function, self._plan),
                                          self._plan.limits.timeout)
        except ToolError as exc:
            yield Exit(reason=ExitReason.TOOL_ERROR, exit_code=1, message=str(exc),
                       wall_time=self._clock() - started)
            return
        except TimeoutError:
            yield Exit(reason=ExitReason.TIMEOUT, exit_code=1,
                       message=f"stopped at its deadline of {self._plan.limits.timeout:g}s",
                       wall_time=self._clock() - started)
            return
        for offset in range(0, len(data), CHUNK):
            yield Output(Stream.STDOUT, offset, data[offset:offset + CHUNK])
        yield Exit(reason=ExitReason.EXITED, wall_time=self._clock() - started,
                   stdout_bytes=len(data))

    async def write_stdin(self, data: bytes) -> None:
        """Function tools read no stdin."""

    def close_stdin(self) -> None:
        """Function tools read no stdin."""

    def send_signal(self, sig: int) -> None:
        """Function tools run in the daemon and take no signals."""

    def cancel(self) -> None:
        """Nothing to kill: the handler is bounded by its size limits."""


Run = CommandRun | FunctionRun
