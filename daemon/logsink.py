"""The log's sink: lines to a stream, written once per turn of the event loop.

A call leaves several log lines (authenticated, started, exited, ...); written and flushed one
by one, each costs the daemon a write(2) and wakes whoever reads the stream (journald, a
pipe), which on a small host is CPU a short call waits for. Lines logged on the event loop's
thread are gathered and written together when the loop next turns, in order, with one
flush; lines from any other thread (or with no loop running) are written at once. A daemon
killed with SIGKILL loses at most the lines of its last turn; ``flush`` runs at exit.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, TextIO


class BatchedLogger:
    """A structlog logger (``msg`` and the level names) writing whole lines to ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def msg(self, message: str) -> None:
        """Write ``message`` as one line: now, or with the others of this loop turn."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if loop is None:
                self._write([message])
                return
            self._lines.append(message)
            if self._loop is not None:
                return
            self._loop = loop
        loop.call_soon(self.flush)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write every gathered line, in order."""
        with self._lock:
            lines, self._lines, self._loop = self._lines, [], None
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if lines:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()


class BatchedLoggerFactory:
    """structlog's logger factory for one shared ``BatchedLogger``."""

    def __init__(self, stream: TextIO) -> None:
        self.logger = BatchedLogger(stream)

    def __call__(self, *_args: Any) -> BatchedLogger:
        return self.logger
