"""A run's output kept for whoever reads it, now or later: a bounded replay buffer.

Every chunk a run writes is appended here, whoever listens; readers (the caller's stream,
AttachRun) read from the stream offsets they ask for, at their own pace. The buffer holds
at most ``capacity`` bytes: the first quarter of the output (the head: how it started) and
the latest (the tail: how it is going); what lay between is dropped and counted per stream,
and a reader sees the jump in the offsets.

Back pressure: while an attached reader lags more than ``HIGH_WATER`` bytes behind, the
pump waits (``room``), so a slow caller slows the command instead of losing its output, as
when it read the pipes itself; what a reader has still to read is never dropped (a buffer
smaller than HIGH_WATER grows to it while one lags). A run nobody reads is read at full
speed into the buffer. A hold (``hold``) is a place kept for a reader still to come.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace

from execgate.daemon.model import Exit, Output, RunEvent, Stream

HIGH_WATER = 2 * 1024 * 1024
"""Bytes a reader may lag behind before the run's output waits for it."""
MESSAGE_BYTES = 1024 * 1024
"""The most output one message to a reader carries (chunks gathered for a reader behind)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing new for a while: the run (and the reader) are alive."""


@dataclass(eq=False)
class _Cursor:
    """Where one reader is: the next chunk's sequence number and each stream's offset."""

    seq: int
    offsets: dict[Stream, int] = field(default_factory=dict)


ReplayHold = _Cursor
"""A place in the output kept for a reader still to come (``Replay.hold``)."""


class Replay:
    """The output and exit of one run, for any number of readers."""

    def __init__(self, capacity: int) -> None:
        self._head_room = capacity // 4
        self._tail_room = capacity - self._head_room
        self._head: list[Output] = []
        self._head_bytes = 0
        self._tail: deque[Output] = deque()
        self._tail_bytes = 0
        self._tail_seq = 0
        """Sequence number of the tail's first chunk; the head's are their indexes."""
        self._head_full = False
        self.offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        """Bytes each stream has written so far."""
        self.dropped = {Stream.STDOUT: 0, Stream.STDERR: 0}
        """Bytes of each stream no longer held (between the head and the tail)."""
        self.exit: Exit | None = None
        self._cursors: set[_Cursor] = set()
        """The readers' places."""
        self._holds: set[_Cursor] = set()
        """Places kept for readers still to come (``hold``)."""
        self._news: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def readers(self) -> int:
        """Readers attached now."""
        return len(self._cursors)

    @property
    def held_bytes(self) -> int:
        """Bytes of output held for readers."""
        return self._head_bytes + self._tail_bytes

    def append(self, chunk: Output) -> None:
        """Keep ``chunk`` (the next bytes of its stream)."""
        self.offsets[chunk.stream] = chunk.offset + len(chunk.data)
        if not self._head_full:
            room = self._head_room - self._head_bytes
            if len(chunk.data) <= room:
                self._head.append(chunk)
                self._head_bytes += len(chunk.data)
                self._tail_seq = len(self._head)
                self._wake()
                return
            self._head_full = True
            if room > 0:  # split: what fits ends the head, the rest starts the tail
                self._head.append(replace(chunk, data=chunk.data[:room]))
                self._head_bytes += room
                chunk = Output(chunk.stream, chunk.offset + room, chunk.data[room:])
            self._tail_seq = len(self._head)
        self._tail.append(chunk)
        self._tail_bytes += len(chunk.data)
        self._trim()
        self._wake()

    def finish(self, exit: Exit) -> None:
        """The run ended: readers get ``exit`` after the output."""
        self.exit = exit
        self._wake()

    def release(self) -> int:
        """Let go of all held output (a finished run, past the daemon's budget for them):
        readers from now on jump to the exit, the bytes counted as dropped. Returns how
        many bytes were let go."""
        freed = self.held_bytes
        for chunk in (*self._head, *self._tail):
            self.dropped[chunk.stream] += len(chunk.data)
        self._tail_seq += len(self._tail)  # the next chunk's number: every cursor jumps to it
        self._head, self._head_bytes, self._head_full = [], 0, True
        self._tail.clear()
        self._tail_bytes = 0
        self._wake()
        return freed

    def hold(self, stdout_offset: int, stderr_offset: int) -> ReplayHold:
        """Keep the output from these offsets for a reader still to come: until ``unhold``
        (or a reader takes it over, ``read``), the run's output waits for it (``room``) as
        for a reader there, and none of it is dropped."""
        held = _Cursor(0, {Stream.STDOUT: stdout_offset, Stream.STDERR: stderr_offset})
        self._holds.add(held)
        return held

    def unhold(self, held: ReplayHold) -> None:
        """Let go of what ``hold`` kept."""
        if held in self._holds:
            self._holds.discard(held)
            self._trim()
            self._wake()

    @staticmethod
    def covers(held: ReplayHold, stdout_offset: int, stderr_offset: int) -> bool:
        """Whether a reader from these offsets reads all that ``held`` keeps."""
        return (stdout_offset <= held.offsets[Stream.STDOUT]
                and stderr_offset <= held.offsets[Stream.STDERR])

    async def room(self) -> None:
        """Wait while an attached reader (or a hold) lags too far behind."""
        while any(self._lag(c) >= HIGH_WATER for c in (*self._cursors, *self._holds)):
            await asyncio.shield(self._news)

    async def read(self, stdout_offset: int, stderr_offset: int,
                   heartbeat: float | None = None, first_heartbeat: float | None = None,
                   taking: ReplayHold | None = None,
                   ) -> AsyncGenerator[RunEvent | Heartbeat, None]:
        """Output from these offsets on (what is still held, then live), then the exit; a
        Heartbeat after each ``heartbeat`` seconds without either (the first one after
        ``first_heartbeat``, when given). The reader takes over ``taking``, a hold it
        ``covers``: let go once the reader's own place is kept."""
        cursor = _Cursor(0, {Stream.STDOUT: stdout_offset, Stream.STDERR: stderr_offset})
        self._cursors.add(cursor)
        if taking is not None:
            self.unhold(taking)
        wait = first_heartbeat if first_heartbeat is not None else heartbeat
        try:
            while True:
                chunk = self._next(cursor)
                if chunk is not None:
                    yield self._gather(cursor, chunk)
                    wait = heartbeat
                    self._wake()  # the pump may be waiting for this reader
                    continue
                if self.exit is not None:
                    yield self.exit
                    return
                try:
                    await asyncio.wait_for(asyncio.shield(self._news), wait)
                except TimeoutError:
                    yield Heartbeat()
                    wait = heartbeat
        finally:
            self._cursors.discard(cursor)
            self._trim()
            self._wake()

    def _gather(self, cursor: _Cursor, chunk: Output) -> Output:
        """``chunk`` and the chunks of its stream that follow it already here, as one (up to
        MESSAGE_BYTES): a reader that fell behind (its caller is slower than the command)
        catches up in fewer, bigger messages, each of which costs both ends the same
        whatever its size; one that keeps up gets each chunk as it comes."""
        parts = [chunk.data]
        size = len(chunk.data)
        while size < MESSAGE_BYTES:
            seq, offsets = cursor.seq, dict(cursor.offsets)
            more = self._next(cursor)
            if (more is None or more.stream is not chunk.stream
                    or more.offset != chunk.offset + size
                    or size + len(more.data) > MESSAGE_BYTES):
                cursor.seq, cursor.offsets = seq, offsets  # left for the next message
                break
            parts.append(more.data)
            size += len(more.data)
        return chunk if len(parts) == 1 else Output(chunk.stream, chunk.offset, b"".join(parts))

    def _next(self, cursor: _Cursor) -> Output | None:
        """The next chunk ``cursor`` has not seen, cut to its offsets; advances it."""
        while True:
            if cursor.seq < len(self._head):
                chunk = self._head[cursor.seq]
            else:
                cursor.seq = max(cursor.seq, self._tail_seq)  # a dropped stretch: jump it
                index = cursor.seq - self._tail_seq
                if index >= len(self._tail):
                    return None
                chunk = self._tail[index]
            cursor.seq += 1
            end = chunk.offset + len(chunk.data)
            wanted = cursor.offsets[chunk.stream]
            if end <= wanted:
                continue
            cursor.offsets[chunk.stream] = end
            if chunk.offset < wanted:
                return Output(chunk.stream, wanted, chunk.data[wanted - chunk.offset:])
            return chunk

    def _trim(self) -> None:
        """Drop the oldest of the tail past its room, but never what a reader (or a hold)
        has still to read: the output waits for it instead (``room``), so the tail may hold
        up to HIGH_WATER and a chunk more while one lags, whatever the buffer's size."""
        while self._tail_bytes > self._tail_room:
            first = self._tail[0]
            end = first.offset + len(first.data)
            if any(c.offsets[first.stream] < end for c in (*self._cursors, *self._holds)):
                break
            excess = self._tail_bytes - self._tail_room
            if len(first.data) <= excess:
                self._tail.popleft()
                self._tail_seq += 1
                cut = len(first.data)
            else:  # drop the chunk's beginning only
                self._tail[0] = Output(first.stream, first.offset + excess,
                                       first.data[excess:])
                cut = excess
            self._tail_bytes -= cut
            self.dropped[first.stream] += cut

    def _lag(self, cursor: _Cursor) -> int:
        """Bytes written that ``cursor`` has still to read (a stream it asked to read from
        past its end adds nothing)."""
        return sum(max(0, written - cursor.offsets[stream])
                   for stream, written in self.offsets.items())

    def _wake(self) -> None:
        if not self._news.done():
            self._news.set_result(None)
        self._news = asyncio.get_running_loop().create_future()
