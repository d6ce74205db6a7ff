"""One run's lifecycle: output pump, output cap, deadline, idle timeout, stdin, signals,
cancel, reap.

Output is read straight from the pipes with ``add_reader`` as it arrives and queued for the
caller; when more than ``HIGH_WATER`` bytes wait for a slow caller the pipes are not read,
so the command blocks on its own writes instead of the daemon buffering. Past the output
limit nothing is buffered either: bytes are read, counted as dropped, and the run is stopped.
The exit status comes from the sandbox helper's report (the job's init waits for the
command and supplies its rusage), so no thread waits per child.

Every run ends in exactly one Exit, handed to ``on_exit`` as soon as it is known, whether or
not anyone still reads ``events()``: a caller that went away, or a daemon that stops, still
leaves a record of how the run ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from execgate.daemon.model import (
    CommandPlan,
    Exit,
    ExitReason,
    FunctionPlan,
    Limits,
    Output,
    RunEvent,
    Stream,
)
from execgate.daemon.sandbox import ExitStatus, Job, Layers, Spawner
from execgate.daemon.tools import ToolError, run_function

CHUNK = 64 * 1024
BIG_CHUNK = 1024 * 1024
"""Reads (and the pipe) grow to this once a stream fills a whole CHUNK: a flood then costs
one read, one message and one wakeup per MiB instead of per 64 KiB."""
_F_SETPIPE_SZ = 1031
HIGH_WATER = 2 * 1024 * 1024
LOW_WATER = 1024 * 1024
EOF_GRACE = 0.5
"""Seconds to wait for end of output once the command has exited: without a pid namespace a
process that escaped the session may hold a pipe open, and must not hold the call with it."""

Clock = Callable[[], float]
OnExit = Callable[[Exit], None]
"""Told, once, how a run ended."""


class CommandRun:
    """A running command; ``events()`` yields its output and then exactly one Exit."""

    @classmethod
    def start(cls, spawner: Spawner, plan: CommandPlan, layers: Layers, on_exit: OnExit,
              clock: Clock = time.monotonic) -> CommandRun:
        """Make the job's pipes, hand their far ends to the sandbox, and start pumping."""
        ours: list[int] = []
        theirs: list[int] = []
        try:
            if plan.stdin:
                stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                theirs.append(stdin_r)
                ours.append(stdin_w)
            else:
                theirs.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            for _ in range(2):
                r, w = os.pipe2(os.O_CLOEXEC)
                ours.append(r)
                theirs.append(w)
            job = spawner.spawn(plan, layers, *theirs)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        stdin = ours.pop(0) if plan.stdin else None
        return cls(job, stdin, ours[0], ours[1], plan.limits, on_exit, clock)

    def __init__(self, job: Job, stdin: int | None, stdout: int, stderr: int, limits: Limits,
                 on_exit: OnExit, clock: Clock = time.monotonic) -> None:
        self._loop = asyncio.get_running_loop()
        self._job = job
        self._report_exit = on_exit
        self.layers: Layers | None = job.layers
        """The kernel layers confining the command."""
        self._limits = limits
        self._clock = clock
        self._started = clock()
        self._queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._queued = 0
        self._paused = False
        self._discard = False
        self._streams = {stdout: Stream.STDOUT, stderr: Stream.STDERR}
        self._read_size: dict[int, int] = {}
        self._offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._dropped = 0
        self._status: ExitStatus | None = None
        self._stop_reason: ExitReason | None = None
        self._stop_message = ""
        self._finished = False
        self._last_output = self._started
        self._stdin = stdin
        for fd in (stdin, stdout, stderr):
            if fd is not None:
                os.set_blocking(fd, False)
        for fd in self._streams:
            self._loop.add_reader(fd, self._on_readable, fd)
        job.exited.add_done_callback(self._on_exit)
        self._timers = [self._loop.call_later(limits.timeout, self._stop, ExitReason.TIMEOUT)]
        if limits.idle_timeout is not None:
            self._timers.append(self._loop.call_later(limits.idle_timeout, self._check_idle))

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
        """Signal the command's session, as the caller asked."""
        self._job.signal_group(sig)

    def cancel(self) -> None:
        """The caller is gone: kill the group now; reaping goes on without a reader."""
        self._discard = True
        self._resume()
        self._stop(ExitReason.CANCELLED, kill_now=True)

    def stop(self, reason: ExitReason, message: str = "") -> None:
        """End the run for ``reason`` (``message`` says more than the reason's own text):
        SIGTERM now, SIGKILL after the tool's kill grace."""
        self._stop(reason, message)

    # -- the pipes' and the child's side ------------------------------------------------

    def _on_readable(self, fd: int) -> None:
        size = self._read_size.get(fd, CHUNK)
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(fd)
            self._maybe_finish()
            return
        self._last_output = self._clock()
        if len(data) == size == CHUNK:
            self._grow(fd)
        stream = self._streams[fd]
        sent = self._offsets[Stream.STDOUT] + self._offsets[Stream.STDERR]
        keep = data[: max(0, self._limits.output_limit_bytes - sent)]
        if keep:
            self._emit(Output(stream, self._offsets[stream], keep))
            self._offsets[stream] += len(keep)
        if len(keep) < len(data):
            self._dropped += len(data) - len(keep)
            self._stop(ExitReason.OUTPUT_LIMIT)

    def _grow(self, fd: int) -> None:
        """A chatty stream: read it a MiB at a time, from a pipe that holds as much. An
        unprivileged daemon over its pipe quota keeps the small pipe (and still reads big)."""
        self._read_size[fd] = BIG_CHUNK
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, BIG_CHUNK)

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

    def _on_exit(self, exited: asyncio.Future[ExitStatus]) -> None:
        self._status = exited.result()
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

    def _check_idle(self) -> None:
        assert self._limits.idle_timeout is not None
        quiet = self._clock() - self._last_output
        if quiet >= self._limits.idle_timeout:
            self._stop(ExitReason.IDLE_TIMEOUT)
        else:  # output came meanwhile: look again when it would next be idle long enough
            self._timers.append(self._loop.call_later(
                self._limits.idle_timeout - quiet, self._check_idle))

    def _stop(self, reason: ExitReason, message: str = "", kill_now: bool = False) -> None:
        if self._status is not None:
            return
        stopping = self._stop_reason is not None
        if not stopping:  # the first reason is the true one
            self._stop_reason, self._stop_message = reason, message
        self.close_stdin()
        if kill_now:  # nobody waits for a graceful end, even mid-grace
            self._job.signal_group(signal.SIGKILL)
            return
        if stopping:
            return
        self._job.signal_group(signal.SIGTERM)
        self._timers.append(self._loop.call_later(
            self._limits.kill_grace, self._job.signal_group, signal.SIGKILL))

    def _maybe_finish(self) -> None:
        if self._finished or self._status is None or self._streams:
            return
        self._finished = True
        for timer in self._timers:
            timer.cancel()
        self.close_stdin()
        status = self._status
        reason = _reason(status, self._stop_reason)
        message = (status.error or (self._stop_message if reason is self._stop_reason else "")
                   or _REASON_TEXT.get(reason, "").format(limits=self._limits))
        exit = Exit(
            reason=reason, exit_code=status.exit_code, signal=status.signal,
            message=message,
            wall_time=self._clock() - self._started, user_time=status.user_time,
            system_time=status.system_time, max_rss_bytes=status.max_rss_bytes,
            stdout_bytes=self._offsets[Stream.STDOUT], stderr_bytes=self._offsets[Stream.STDERR],
            dropped_bytes=self._dropped)
        self._report_exit(exit)  # recorded before the caller can see it
        self._queue.put_nowait(exit)

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


def _reason(status: ExitStatus, stopped: ExitReason | None) -> ExitReason:
    """Why a command ended, most specific first: a limit the kernel enforced says more than
    the signal it used."""
    if status.error is not None:
        return ExitReason.SANDBOX_ERROR
    if stopped in (ExitReason.CANCELLED, ExitReason.DAEMON_STOPPING):
        return stopped
    if status.oom_kills:
        return ExitReason.MEMORY_LIMIT
    if status.pids_max_hits:  # forks were refused: whatever it printed, the job was cut short
        return ExitReason.PIDS_LIMIT
    if stopped is not None:
        return stopped
    return ExitReason.SIGNALED if status.signal else ExitReason.EXITED


_REASON_TEXT = {
    ExitReason.TIMEOUT: "stopped at its deadline of {limits.timeout:g}s",
    ExitReason.IDLE_TIMEOUT: "stopped after {limits.idle_timeout:g}s without output",
    ExitReason.OUTPUT_LIMIT: "stopped when its output passed {limits.output_limit_bytes} bytes",
    ExitReason.CANCELLED: "cancelled by the caller",
    ExitReason.DAEMON_STOPPING: "stopped because the daemon is stopping",
    ExitReason.MEMORY_LIMIT: "killed by the kernel at the job's memory limit",
    ExitReason.PIDS_LIMIT: "hit the job's process limit (forks were refused)",
}


class FunctionRun:
    """A built-in function tool call; same events as a command."""

    layers: Layers | None = None
    """Function tools run in the daemon, confined by construction, not by kernel layers."""

    def __init__(self, plan: FunctionPlan, on_exit: OnExit,
                 clock: Clock = time.monotonic) -> None:
        self._plan = plan
        self._on_exit: OnExit | None = on_exit
        self._clock = clock
        self._started = clock()
        self._stopped: asyncio.Future[tuple[ExitReason, str]] = (
            asyncio.get_running_loop().create_future())

    async def events(self) -> AsyncIterator[RunEvent]:
        """The tool's result as stdout chunks, then the Exit."""
        # The handler's thread cannot be interrupted: a stop ends the wait, not the thread,
        # which its size limits bound.
        work = asyncio.ensure_future(asyncio.to_thread(run_function, self._plan))
        waited: set[asyncio.Future[Any]] = {work, self._stopped}
        try:
            await asyncio.wait(waited, timeout=self._plan.limits.timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished = work.done()
            if not finished:
                work.cancel()
        data = b""
        if finished and isinstance(error := work.exception(), ToolError):
            exit = Exit(reason=ExitReason.TOOL_ERROR, exit_code=1, message=str(error))
        elif finished:
            data = work.result()
            exit = Exit(reason=ExitReason.EXITED, stdout_bytes=len(data))
        elif self._stopped.done():
            reason, message = self._stopped.result()
            exit = Exit(reason=reason, exit_code=1, message=message)
        else:
            exit = Exit(reason=ExitReason.TIMEOUT, exit_code=1,
                        message=f"stopped at its deadline of {self._plan.limits.timeout:g}s")
        exit = self._finish(exit)
        for offset in range(0, len(data), CHUNK):
            yield Output(Stream.STDOUT, offset, data[offset:offset + CHUNK])
        yield exit

    async def write_stdin(self, data: bytes) -> None:
        """Function tools read no stdin."""

    def close_stdin(self) -> None:
        """Function tools read no stdin."""

    def send_signal(self, sig: int) -> None:
        """Function tools run in the daemon and take no signals."""

    def cancel(self) -> None:
        """The caller is gone: the result is dropped (the handler's thread runs out)."""
        self.stop(ExitReason.CANCELLED)
        self._finish(Exit(reason=ExitReason.CANCELLED, exit_code=1,
                          message=_REASON_TEXT[ExitReason.CANCELLED]))

    def stop(self, reason: ExitReason, message: str = "") -> None:
        """End the call for ``reason`` (``message`` says more) without its result."""
        if not self._stopped.done():
            self._stopped.set_result((reason, message or _REASON_TEXT[reason]))

    def _finish(self, exit: Exit) -> Exit:
        """``exit`` with its wall time; the first one is recorded."""
        exit = replace(exit, wall_time=self._clock() - self._started)
        if self._on_exit is not None:
            on_exit, self._on_exit = self._on_exit, None
            on_exit(exit)
        return exit


Run = CommandRun | FunctionRun
