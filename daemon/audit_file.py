"""The audit file: append-only JSON lines in a hash chain, and its verification.

Each record carries ``seq`` (its place in the chain, across files), ``prev`` (the previous
record's ``hash``) and ``hash``: SHA-256 over ``prev`` and the record's canonical JSON
without ``hash`` (HMAC-SHA256 with a key, ``chain: hmac-sha256``, so that a writer without
the key cannot forge a consistent chain). Editing a record changes its hash; removing,
swapping or cutting records breaks ``seq`` or ``prev``. The first record of a file carries
the last hash of the file it follows, so a rotated set verifies as one chain.

A record is one ``write`` of one whole line to a file opened ``O_APPEND``: a daemon killed
mid-write leaves at most a torn last line. The next writer cuts such a tail off and says so
in its first record (``audit.resumed`` with the torn bytes' length and SHA-256).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

GENESIS = "0" * 64
"""``prev`` of the first record of a chain that follows nothing."""


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers (everything but ``hash``), and the line written."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str).encode()


def record_hash(record: Mapping[str, Any], key: bytes | None) -> str:
    """The ``hash`` a record must carry."""
    body = canonical({k: v for k, v in record.items() if k != "hash"})
    if key is not None:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


class AuditFile:
    """Appends records to a hash-chained audit file; ``fsync`` ``every`` record, or at most
    ``interval`` seconds after the first record not yet on disk."""

    def __init__(self, path: Path, fsync: Literal["every", "interval"] = "interval",
                 interval: float = 1.0, key: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._every = fsync == "every"
        self._interval = interval
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()  # the spawner's reader thread may record too
        self._timer: threading.Timer | None = None
        self._seq = 0
        self._prev = GENESIS
        self._fd = -1
        self._open()

    def _open(self) -> None:
        """Open the file for appending, continuing the chain of what it already holds."""
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)
        torn = self._resume()
        if torn:
            self.write({"event": "audit.resumed", "torn_bytes": len(torn),
                        "torn_sha256": hashlib.sha256(torn).hexdigest()})

    def _resume(self) -> bytes:
        """Take ``seq`` and ``prev`` from the file's last whole record; cut off (and return)
        a torn last line. Raises ValueError when the file is not an audit file."""
        size = os.path.getsize(self._path)
        chunk = 64 * 1024
        with open(self._path, "rb") as existing:
            while True:  # read back from the end until the last whole line is in hand
                start = max(0, size - chunk)
                existing.seek(start)
                data = existing.read()
                if start == 0 or data.count(b"\n") >= 2:
                    break
                chunk *= 2
        body, newline, torn = data.rpartition(b"\n")
        if not newline:
            body, torn = b"", data
        if torn:
            os.truncate(self._path, size - len(torn))
        last = body.rpartition(b"\n")[2]
        if last:
            try:
                record = json.loads(last)
                self._seq, self._prev = int(record["seq"]) + 1, str(record["hash"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{self._path} is not an execgate audit file (its last "
                                 "line is not a chained record)") from None
        return torn

    def write(self, fields: Mapping[str, Any]) -> None:
        """Append one record: ``fields`` with ``ts``, ``seq``, ``prev`` and ``hash``."""
        with self._lock:
            record = {"ts": round(self._clock(), 6), **fields, "seq": self._seq,
                      "prev": self._prev}
            if self._key is not None:
                record["chain"] = "hmac-sha256"
            record["hash"] = record_hash(record, self._key)
            os.write(self._fd, canonical(record) + b"\n")
            self._seq, self._prev = self._seq + 1, record["hash"]
            if self._every:
                os.fsync(self._fd)
            elif self._timer is None:
                self._timer = threading.Timer(self._interval, self._sync)
                self._timer.daemon = True
                self._timer.start()

    def _sync(self) -> None:
        with self._lock:
            self._timer = None
            if self._fd >= 0:
                os.fsync(self._fd)

    def reopen(self) -> None:
        """Continue the chain in a new file at the same path (after the operator moved the
        old one away): its first record carries the old file's last hash."""
        with self._lock:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = os.open(self._path,
                               os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def close(self) -> None:
        """Sync and close."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


@dataclass(frozen=True)
class Finding:
    """What verification found: ``intact``, or where and how the chain first breaks."""

    intact: bool
    message: str
    torn: bool = False
    """Only the last line is torn (a write cut short); everything before it verifies."""


def verify(paths: Iterable[Path], key: bytes | None = None) -> Finding:
    """Check the files, in order, as one chain; the first break found is reported."""
    expected_seq: int | None = None
    prev: str | None = None
    count = 0
    paths = list(paths)
    for number, path in enumerate(paths):
        lines = path.read_bytes().split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        records: list[dict[str, Any] | None] = [_parse(line) for line in lines]
        seqs = {r.get("seq") for r in records if r is not None}
        for line_no, record in enumerate(records, 1):
            where = f"{path}:{line_no}"
            if record is None:
                return Finding(False, f"{where}: not a whole record (altered or truncated)")
            seqs.discard(record.get("seq"))
            problem = _check(record, key, expected_seq, prev)
            if problem and record.get("seq") != expected_seq and expected_seq in seqs:
                problem = f"out of order (record {expected_seq} comes later)"
            if problem:
                return Finding(False, f"{where}: record {record.get('seq')}: {problem}")
            expected_seq, prev = int(record["seq"]) + 1, str(record["hash"])
            count += 1
        if tail:
            if number == len(paths) - 1:
                return Finding(False, f"{path}:{len(lines) + 1}: torn last line "
                                      f"({len(tail)} bytes; a write cut short); the "
                                      f"{count} records before it verify", torn=True)
            return Finding(False, f"{path}:{len(lines) + 1}: truncated record "
                                  "(the file ends mid-line and another follows it)")
    return Finding(True, f"intact: {count} records")


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _check(record: dict[str, Any], key: bytes | None, expected_seq: int | None,
           prev: str | None) -> str:
    """What is wrong with one record in its place, or ""."""
    seq, carried = record.get("seq"), record.get("hash")
    if not isinstance(seq, int) or not isinstance(carried, str):
        return "no seq or hash (not an audit record)"
    if record.get("chain") == "hmac-sha256" and key is None:
        return "chained with an HMAC key: give it (--hmac-key-env) to verify"
    if key is not None and record.get("chain") != "hmac-sha256":
        return "not chained with the HMAC key"
    if expected_seq is not None and seq > expected_seq:
        return f"records {expected_seq}..{seq - 1} are missing (removed)"
    if expected_seq is not None and seq < expected_seq:
        return f"out of order (record {expected_seq} expected)"
    if not hmac.compare_digest(record_hash(record, key), carried):
        return "altered (its content does not match its hash)"
    if prev is not None and record.get("prev") != prev:
        return "does not follow the record before it (a record was altered or replaced)"
    if prev is None and seq == 0 and record.get("prev") != GENESIS:
        return "first record of a chain with a predecessor's hash"
    return ""
