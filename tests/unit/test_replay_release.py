"""A finished run's output can be let go (the daemon's budget for retained output): readers
then get the exit, with the bytes counted as dropped."""

from __future__ import annotations

from execgate.daemon.model import Exit, ExitReason, Output, Stream
from execgate.daemon.replay import Replay


async def test_a_released_replay_gives_readers_the_exit_and_counts_the_output_dropped() -> None:
    replay = Replay(1024)
    replay.append(Output(Stream.STDOUT, 0, b"a" * 100))
    replay.append(Output(Stream.STDERR, 0, b"b" * 50))
    replay.finish(Exit(reason=ExitReason.EXITED, stdout_bytes=100, stderr_bytes=50))
    assert replay.release() == 150
    events = [event async for event in replay.read(0, 0)]
    assert [type(e) for e in events] == [Exit]
    assert replay.dropped == {Stream.STDOUT: 100, Stream.STDERR: 50}
    assert replay.held_bytes == 0


async def test_a_reader_past_part_of_the_output_still_ends_at_the_exit() -> None:
    replay = Replay(1024)
    replay.append(Output(Stream.STDOUT, 0, b"x" * 10))
    replay.append(Output(Stream.STDOUT, 10, b"y" * 10))
    replay.finish(Exit(reason=ExitReason.EXITED, stdout_bytes=20))
    replay.release()
    events = [event async for event in replay.read(10, 0)]
    assert len(events) == 1 and isinstance(events[0], Exit)
