"""SIGHUP reloads the policy for new calls; running calls keep the one they started under, and
an invalid policy changes nothing."""

from __future__ import annotations

import json
import queue
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from execgate.client import AuthenticationError, Exited, OutputChunk, RateLimitedError, Started
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

OTHER_KEY = "other-key-9876543210"
TWO_KEYS = TEST_POLICY.replace(
    '      - {name: tester, key: "${TEST_API_KEY}"}\n',
    '      - {name: tester, key: "${TEST_API_KEY}"}\n'
    f'      - {{name: other, key: "{OTHER_KEY}"}}\n')
RATE_LIMITED = TEST_POLICY.replace(
    "server:\n", "server:\n  rate_limiting: {requests_per_minute: 1, burst: 2}\n")


def _records(d: Daemon, event: str) -> list[dict[str, Any]]:
    out = []
    for line in list(d.stderr_lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("audit") and record.get("event") == event:
            out.append(record)
    return out


def _reload(d: Daemon, policy: str, event: str = "policy.reloaded") -> dict[str, Any]:
    """Write ``policy``, send SIGHUP and return the audit event that answered it."""
    before = len(_records(d, event))
    (d.root / "policy.yaml").write_text(policy)
    d.proc.send_signal(signal.SIGHUP)
    with d.said:
        d.said.wait_for(lambda: len(_records(d, event)) > before, timeout=30)
    records = _records(d, event)
    assert len(records) > before, f"no {event} after SIGHUP"
    return records[-1]


@pytest.fixture
def reloaded(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, TWO_KEYS)
    yield d
    d.stop()


def test_a_removed_api_key_is_refused_after_reload(reloaded: Daemon) -> None:
    _reload(reloaded, TEST_POLICY)
    with reloaded.client(OTHER_KEY) as client, pytest.raises(AuthenticationError):
        client.run(["true"], agent="dev")
    with reloaded.client(API_KEY) as client:
        assert client.run(["true"], agent="dev").exit_code == 0


def test_a_running_call_finishes_under_the_policy_it_started_with(reloaded: Daemon) -> None:
    """Its key is gone, but the call it made keeps going and ends normally."""
    stdin: queue.Queue[bytes | None] = queue.Queue()
    with reloaded.client(OTHER_KEY) as client:
        events = client.stream(["cat"], agent="dev", stdin=iter(stdin.get, None))
        assert isinstance(next(events), Started)
        _reload(reloaded, TEST_POLICY)
        stdin.put(b"still here\n")
        stdin.put(None)
        rest = list(events)
    assert b"".join(e.data for e in rest if isinstance(e, OutputChunk)) == b"still here\n"
    assert isinstance(rest[-1], Exited)
    assert rest[-1].exit_code == 0


def test_an_invalid_policy_is_refused_with_every_error_and_changes_nothing(
        reloaded: Daemon) -> None:
    broken = (TWO_KEYS.replace("max_execution_time: 20s", "max_execution_time: soon")
              .replace("visibility: public", "visibility: everyone"))
    refused = _reload(reloaded, broken, "policy.reload_refused")
    errors = refused["errors"]
    assert isinstance(errors, list) and len(errors) == 2
    assert any("max_execution_time" in e for e in errors)
    assert any("visibility" in e for e in errors)
    with reloaded.client(OTHER_KEY) as client:
        assert client.run(["true"], agent="dev").exit_code == 0


def test_a_reload_keeps_the_rate_limit_already_spent(tmp_path: Path) -> None:
    """Unchanged limits keep their buckets: a reload is no way around a limit."""
    d = start_daemon(tmp_path, RATE_LIMITED)
    try:
        with d.client() as client:
            for _ in range(2):
                assert client.run(["true"], agent="dev").exit_code == 0
            _reload(d, RATE_LIMITED.replace("agents:\n", "agents:\n  extra:\n"
                                            "    visibility: public\n    tools: [shell]\n"))
            with pytest.raises(RateLimitedError):
                client.run(["true"], agent="dev")
    finally:
        d.stop()


def test_a_reload_that_changes_a_restart_only_setting_warns_and_keeps_it(
        reloaded: Daemon) -> None:
    changed = _reload(reloaded, TWO_KEYS.replace("  level: info", "  level: error")
                      .replace("server:\n", "server:\n  max_concurrent_runs: 1\n"))
    assert changed["needs_restart"] == ["server.max_concurrent_runs", "logger"]
    warned = [line for line in reloaded.stderr_lines if "policy.needs_restart" in line]
    assert len(warned) == 2


def test_the_embedded_default_ignores_sighup(tmp_path: Path) -> None:
    """It has no file to read again: the daemon says so and serves on."""
    d = start_daemon(tmp_path, policy=None)
    try:
        d.proc.send_signal(signal.SIGHUP)

        def refused() -> bool:  # the embedded default logs text, not JSON
            return any("policy.reload_refused" in line and "no file to read again" in line
                       for line in d.stderr_lines)

        with d.said:
            assert d.said.wait_for(refused, timeout=30)
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
