"""The audit file's hash chain: what verification finds, and what it passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from execgate.daemon.audit_file import AuditFile, canonical, record_hash, verify


def _write(path: Path, count: int, key: bytes | None = None) -> None:
    file = AuditFile(path, fsync="every", key=key)
    for n in range(count):
        file.write({"event": "run.started", "n": n})
    file.close()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    return path


def test_an_untouched_file_verifies(audit: Path) -> None:
    finding = verify([audit])
    assert finding.intact
    assert finding.message == "intact: 5 records"


def test_an_edited_record_is_found(audit: Path) -> None:
    lines = _lines(audit)
    lines[2] = lines[2].replace(b'"n":2', b'"n":7')
    audit.write_bytes(b"".join(lines))
    finding = verify([audit])
    assert not finding.intact
    assert f"{audit}:3: record 2: altered" in finding.message


def test_an_edited_record_with_its_hash_recomputed_breaks_the_next_link(audit: Path) -> None:
    """A forger who rehashes the edited record still cannot make the next one follow it."""
    lines = _lines(audit)
    record = json.loads(lines[1])
    record["n"] = 9
    record["hash"] = record_hash(record, None)
    lines[1] = canonical(record) + b"\n"
    audit.write_bytes(b"".join(lines))
    finding = verify([audit])
    assert f"{audit}:3: record 2: does not follow the record before it" in finding.message


def test_a_deleted_record_is_found(audit: Path) -> None:
    lines = _lines(audit)
    del lines[3]
    audit.write_bytes(b"".join(lines))
    finding = verify([audit])
    assert f"{audit}:4: record 4: records 3..3 are missing" in finding.message


def test_swapped_records_are_found(audit: Path) -> None:
    lines = _lines(audit)
    lines[1], lines[2] = lines[2], lines[1]
    audit.write_bytes(b"".join(lines))
    finding = verify([audit])
    assert f"{audit}:2: record 2: out of order (record 1 comes later)" in finding.message


def test_a_record_truncated_mid_file_is_found(audit: Path) -> None:
    lines = _lines(audit)
    lines[2] = lines[2][:40] + b"\n"
    audit.write_bytes(b"".join(lines))
    finding = verify([audit])
    assert finding.message == f"{audit}:3: not a whole record (altered or truncated)"


def test_a_torn_last_line_is_reported_as_such(audit: Path) -> None:
    """What a daemon killed mid-write leaves: everything before it still verifies."""
    with audit.open("ab") as file:
        file.write(b'{"event":"run.exi')
    finding = verify([audit])
    assert finding.torn and not finding.intact
    assert "audit.jsonl:6: torn last line (17 bytes" in finding.message


def test_a_writer_cuts_a_torn_tail_and_records_it(audit: Path) -> None:
    with audit.open("ab") as file:
        file.write(b'{"event":"run.exi')
    _write(audit, 1)
    assert verify([audit]).intact
    resumed = json.loads(_lines(audit)[5])
    assert resumed["event"] == "audit.resumed"
    assert resumed["torn_bytes"] == 17


def test_a_rotated_set_verifies_as_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, fsync="every")
    file.write({"event": "a"})
    path.rename(tmp_path / "audit.jsonl.1")
    file.reopen()
    file.write({"event": "b"})
    file.close()
    assert verify([tmp_path / "audit.jsonl.1", path]).intact


def test_rotated_files_given_out_of_order_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, fsync="every")
    file.write({"event": "a"})
    path.rename(tmp_path / "audit.jsonl.1")
    file.reopen()
    file.write({"event": "b"})
    file.close()
    assert "out of order" in verify([path, tmp_path / "audit.jsonl.1"]).message


def test_a_restarted_writer_continues_the_chain(audit: Path) -> None:
    _write(audit, 2)
    assert verify([audit]).message == "intact: 7 records"


def test_a_keyed_chain_needs_its_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 2, key=b"k1")
    assert verify([path], key=b"k1").intact
    assert "give it (--hmac-key-env)" in verify([path]).message
    assert "altered" in verify([path], key=b"k2").message


def test_a_keyed_chain_cannot_be_forged_without_the_key(tmp_path: Path) -> None:
    """Rewriting a keyed file as a plain chain does not pass verification with the key."""
    path = tmp_path / "audit.jsonl"
    _write(path, 2, key=b"k1")
    records = [json.loads(line) for line in _lines(path)]
    path.unlink()
    forged = AuditFile(path, fsync="every")
    for record in records:
        forged.write({k: v for k, v in record.items()
                      if k not in ("ts", "seq", "prev", "hash", "chain")})
    forged.close()
    assert "not chained with the HMAC key" in verify([path], key=b"k1").message
