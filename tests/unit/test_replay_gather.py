"""A reader that fell behind gets the chunks waiting for it gathered into fewer messages:
the same bytes at the same offsets, one stream per message, none over MESSAGE_BYTES."""

from __future__ import annotations

from execgate.daemon.model import Exit, ExitReason, Output, RunEvent, Stream
from execgate.daemon.replay import MESSAGE_BYTES, Heartbeat, Replay


async def _read_all(replay: Replay, stdout: int = 0, stderr: int = 0) -> list[Output]:
    events: list[RunEvent | Heartbeat] = [e async for e in replay.read(stdout, stderr)]
    assert isinstance(events[-1], Exit)
    return [e for e in events if isinstance(e, Output)]


def _finish(replay: Replay) -> None:
    replay.finish(Exit(reason=ExitReason.EXITED))


async def test_waiting_chunks_of_one_stream_arrive_as_one_message() -> None:
    replay = Replay(64 * MESSAGE_BYTES)
    for i in range(4):
        replay.append(Output(Stream.STDOUT, i * 3, b"abc"))
    _finish(replay)
    assert await _read_all(replay) == [Output(Stream.STDOUT, 0, b"abc" * 4)]


async def test_chunks_of_different_streams_are_never_gathered() -> None:
    replay = Replay(64 * MESSAGE_BYTES)
    replay.append(Output(Stream.STDOUT, 0, b"out1"))
    replay.append(Output(Stream.STDERR, 0, b"err"))
    replay.append(Output(Stream.STDOUT, 4, b"out2"))
    _finish(replay)
    assert await _read_all(replay) == [Output(Stream.STDOUT, 0, b"out1"),
                                       Output(Stream.STDERR, 0, b"err"),
                                       Output(Stream.STDOUT, 4, b"out2")]


async def test_no_gathered_message_exceeds_message_bytes() -> None:
    replay = Replay(64 * MESSAGE_BYTES)
    piece = MESSAGE_BYTES // 3 + 1
    for i in range(7):
        replay.append(Output(Stream.STDOUT, i * piece, bytes([i]) * piece))
    _finish(replay)
    messages = await _read_all(replay)
    assert all(len(m.data) <= MESSAGE_BYTES for m in messages)
    assert len(messages) < 7
    assert b"".join(m.data for m in messages) == b"".join(bytes([i]) * piece for i in range(7))
    assert [m.offset for m in messages] == [
        sum(len(p.data) for p in messages[:k]) for k in range(len(messages))]


async def test_a_reader_from_an_offset_gets_the_rest_gathered() -> None:
    replay = Replay(64 * MESSAGE_BYTES)
    for i in range(3):
        replay.append(Output(Stream.STDOUT, i * 4, b"%04d" % i))
    _finish(replay)
    assert await _read_all(replay, stdout=6) == [Output(Stream.STDOUT, 6, b"010002")]
