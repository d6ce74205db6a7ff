"""``execgated verify-audit``: its exit status and what it names, on files a daemon wrote."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_POLICY, start_daemon

POLICY = TEST_POLICY.replace(
    "logger:\n", "logger:\n  audit_file: {path: ./audit.jsonl, fsync: every, "
                 "hmac_key_env: AUDIT_KEY}\n")
KEY = "audit-hmac-key-0123456789"


def _verify(*files: Path, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    args = ["--hmac-key-env", "AUDIT_KEY"] if key else []
    return subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "verify-audit", *args,
                           *map(str, files)], capture_output=True, text=True, timeout=60,
                          env={"AUDIT_KEY": key or "", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit file a daemon wrote: a start, three calls, a stop."""
    d = start_daemon(tmp_path_factory.mktemp("verify"), POLICY, env={"AUDIT_KEY": KEY})
    try:
        with d.client() as c:
            for word in ("a", "b", "c"):
                c.run(["echo", word], agent="dev")
    finally:
        d.stop()
    return d.root / "audit.jsonl"


@pytest.fixture
def audit(written: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "audit.jsonl"
    copy.write_bytes(written.read_bytes())
    return copy


def _rewrite(path: Path, edit: object) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    edit(lines)  # type: ignore[operator]
    path.write_bytes(b"".join(lines))


def test_an_untouched_file_passes(audit: Path) -> None:
    result = _verify(audit)
    assert result.returncode == 0
    assert result.stdout.startswith("intact: ")


def test_an_edited_record_fails_naming_it(audit: Path) -> None:
    _rewrite(audit, lambda lines: lines.__setitem__(
        2, lines[2].replace(b'"success":true', b'"success":false')))
    result = _verify(audit)
    assert result.returncode == 1
    assert f"{audit}:3: " in result.stderr


def test_a_deleted_record_fails(audit: Path) -> None:
    _rewrite(audit, lambda lines: lines.pop(2))
    result = _verify(audit)
    assert result.returncode == 1
    assert "missing (removed)" in result.stderr


def test_swapped_records_fail(audit: Path) -> None:
    _rewrite(audit, lambda lines: lines.insert(1, lines.pop(2)))
    result = _verify(audit)
    assert result.returncode == 1
    assert "out of order" in result.stderr


def test_a_torn_last_line_is_reported_with_its_own_status(audit: Path) -> None:
    _rewrite(audit, lambda lines: lines.__setitem__(-1, lines[-1][:30]))
    result = _verify(audit)
    assert result.returncode == 3
    assert "torn last line" in result.stderr


def test_without_the_key_an_hmac_chain_is_not_passed(audit: Path) -> None:
    result = _verify(audit, key=None)
    assert result.returncode == 1
    assert "--hmac-key-env" in result.stderr


def test_a_daemon_restarted_on_its_file_continues_the_chain(written: Path) -> None:
    """The restarted daemon's first record follows the last one of the earlier run."""
    d = start_daemon(written.parent, POLICY, env={"AUDIT_KEY": KEY})
    d.stop()
    assert _verify(written).returncode == 0


def test_a_daemon_without_its_hmac_key_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"\$AUDIT_KEY is not set"):
        start_daemon(tmp_path, POLICY, env={"AUDIT_KEY": ""})


def test_a_file_rotated_on_reload_verifies_with_its_successor(tmp_path: Path) -> None:
    """Moved away, then SIGHUP: the new file's first record follows the old file's last."""
    d = start_daemon(tmp_path, POLICY, env={"AUDIT_KEY": KEY})
    try:
        (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.1")
        d.proc.send_signal(signal.SIGHUP)
        assert d.audit("policy.reloaded")
        with d.client() as c:
            c.run(["echo", "after"], agent="dev")
    finally:
        d.stop()
    old, new = tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl"
    assert _verify(old, new).returncode == 0
    assert _verify(new, old).returncode == 1
