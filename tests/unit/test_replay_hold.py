"""A replay's place kept for a reader still to come (``hold``): the output waits for it and
none of it is dropped; a reader that covers it takes it over, one that starts later does
not. And back pressure counts only output a reader has still to read."""

from __future__ import annotations

import asyncio

from execgate.daemon.model import Exit, ExitReason, Output, Stream
from execgate.daemon.replay import HIGH_WATER, MESSAGE_BYTES, Replay

CHUNK = 64 * 1024


async def _blocked(replay: Replay) -> bool:
    """Whether the run's output would wait now (``room`` does not return at once)."""
    try:
        await asyncio.wait_for(replay.room(), 0.05)
    except TimeoutError:
        return True
    return False


def _fill(replay: Replay, stdout_bytes: int, start: int = 0) -> int:
    """Append ``stdout_bytes`` of stdout from offset ``start`` in CHUNK pieces; the end."""
    offset = start
    while offset < start + stdout_bytes:
        replay.append(Output(Stream.STDOUT, offset, bytes([offset // CHUNK % 256]) * CHUNK))
        offset += CHUNK
    return offset


async def test_a_hold_makes_the_output_wait_past_high_water() -> None:
    replay = Replay(4 * CHUNK)
    replay.hold(0, 0)
    _fill(replay, HIGH_WATER)
    assert await _blocked(replay)


async def test_without_a_hold_nobody_makes_the_output_wait() -> None:
    replay = Replay(4 * CHUNK)
    _fill(replay, HIGH_WATER)
    assert not await _blocked(replay)


async def test_output_a_hold_keeps_is_not_dropped_from_a_small_buffer() -> None:
    replay = Replay(4 * CHUNK)
    held = replay.hold(0, 0)
    end = _fill(replay, 32 * CHUNK)
    replay.finish(Exit(reason=ExitReason.EXITED, stdout_bytes=end))
    events = [e async for e in replay.read(0, 0, taking=held)]
    data = b"".join(e.data for e in events if isinstance(e, Output))
    assert data == b"".join(bytes([i % 256]) * CHUNK for i in range(end // CHUNK))


async def test_letting_a_hold_go_lets_the_output_move_on() -> None:
    replay = Replay(4 * CHUNK)
    held = replay.hold(0, 0)
    _fill(replay, HIGH_WATER)
    replay.unhold(held)
    assert not await _blocked(replay)
    assert replay.held_bytes <= 4 * CHUNK


async def test_a_reader_from_the_holds_place_or_before_covers_it() -> None:
    replay = Replay(1024)
    held = replay.hold(100, 7)
    assert Replay.covers(held, 100, 7) and Replay.covers(held, 0, 0)
    assert not Replay.covers(held, 101, 7) and not Replay.covers(held, 100, 8)


async def test_a_hold_is_not_counted_as_a_reader() -> None:
    replay = Replay(1024)
    replay.hold(0, 0)
    assert replay.readers == 0


async def test_a_reader_asking_past_a_streams_end_does_not_let_the_output_run_unbounded(
        ) -> None:
    """stdout skipped far ahead, stderr from 0: the reader still has all of stderr to read,
    so stderr past HIGH_WATER waits for it (a negative stdout lag once cancelled it out)."""
    replay = Replay(4 * CHUNK)
    reader = replay.read(10**12, 0)
    waiting = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)  # its place is kept from now on
    offset = 0
    while offset < HIGH_WATER + MESSAGE_BYTES:  # still past HIGH_WATER once it read one
        replay.append(Output(Stream.STDERR, offset, b"e" * CHUNK))
        offset += CHUNK
    assert await _blocked(replay)
    assert isinstance(await waiting, Output)
    await reader.aclose()
