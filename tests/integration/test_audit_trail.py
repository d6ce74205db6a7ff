"""The audit of a scripted session: each expected event with its fields, in the log and in
the hash-chained audit file, and none of the session's secrets anywhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from execgate.client import (
    ApprovalDecision,
    AuthenticationError,
    OutputChunk,
    PolicyDeniedError,
    RateLimitedError,
    Started,
)
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

WRONG_KEY = "wrong-key-SECRET-0001"
SECRETS = {
    "password": "hunter2-SECRET-0002",
    "bearer": "tok-SECRET-0003",
    "url": "pw-SECRET-0004",
    "aws": "AKIASECRET0005ABCDEF",
    "github": "ghp_SECRET0006abcdefghijklmnopqrstuvwxyz",
    "flag": "flag-SECRET-0007",
    "env": "env-SECRET-0008",
}
SECRET_ARGV = ["echo", f"--password={SECRETS['password']}",
               f"Authorization: Bearer {SECRETS['bearer']}",
               f"https://deploy:{SECRETS['url']}@git.example.com/repo.git",
               SECRETS["aws"], SECRETS["github"], "--token", SECRETS["flag"]]

POLICY = TEST_POLICY.replace(
    "    denied_commands: [rm]\n",
    "    denied_commands: [rm]\n    require_approval_for: [touch]\n").replace(
    "logger:\n", "logger:\n  audit_file: {path: ./audit.jsonl, fsync: interval}\n")


@dataclass
class Session:
    """The daemon after the script, and the audit file it wrote."""

    daemon: Daemon
    audit_file: Path


def _script(d: Daemon) -> None:
    with d.client() as c:
        c.agents()
        c.run(SECRET_ARGV, agent="dev", env={"SOME_TOKEN": SECRETS["env"]})
        with pytest.raises(PolicyDeniedError):
            c.run(["rm", "--token", SECRETS["flag"]], agent="dev")
        c.run(["touch", "approved.txt"], agent="dev", on_approval=lambda r: True)
        with pytest.raises(Exception, match="no thanks"):
            c.run(["touch", "refused.txt"], agent="dev",
                  on_approval=lambda r: ApprovalDecision(False, "no thanks"))
        c.run(["sleep", "10"], agent="dev", timeout=0.5)
        events = c.stream(["sh", "-c", "echo up; exec sleep 60"], agent="dev")
        run_id = next(e for e in events if isinstance(e, Started)).run_id
        assert isinstance(next(events), OutputChunk)
        events.close()
        d.audit("run.exited", run_id=run_id)
    with d.client(token=WRONG_KEY) as bad, pytest.raises(AuthenticationError):
        bad.agents()
    policy = d.root / "policy.yaml"
    policy.write_text(policy.read_text().replace(
        "server:\n", "server:\n  rate_limiting: {requests_per_minute: 1, burst: 1}\n", 1))
    d.proc.send_signal(signal.SIGHUP)
    assert d.audit("policy.reloaded")
    with d.client() as c:
        c.run(["true"], agent="dev")
        with pytest.raises(RateLimitedError):
            c.run(["true"], agent="dev")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    d = start_daemon(tmp_path_factory.mktemp("trail"), POLICY)
    try:
        _script(d)
    finally:
        d.stop()
    return Session(d, d.root / "audit.jsonl")


def _one(session: Session, event: str, **match: object) -> dict[str, Any]:
    found = session.daemon.audit(event, **match)
    assert len(found) == 1, f"{event} {match}: {found}"
    return found[0]


def test_a_verified_credential_is_recorded(session: Session) -> None:
    record = _one(session, "auth.succeeded", rpc="/execgate.v1.AgentService/ListAgents")
    assert record["subject"] == "tester"
    assert record["auth"] == "api_key"
    assert record["peer"].startswith("ipv4:127.0.0.1:")
    assert record["request_id"]


def test_a_failed_authentication_has_a_reason_code(session: Session) -> None:
    record = _one(session, "auth.failed")
    assert record["reason"] == "invalid_credentials"
    assert record["success"] is False


def test_discovery_is_recorded_with_what_was_shown(session: Session) -> None:
    assert _one(session, "agents.listed")["agents"] == ["dev", "ops"]


def test_an_allowed_call_records_what_ran_with_secrets_redacted(session: Session) -> None:
    record = _one(session, "run.started", argv=[
        "echo", "--password=[redacted:password]", "Authorization: Bearer [redacted:bearer]",
        "https://[redacted:url_credentials]@git.example.com/repo.git", "[redacted:aws_key]",
        "[redacted:github_token]", "--token", "[redacted:secret_flag]"])
    assert record["executable"].endswith("/echo")
    assert "SOME_TOKEN" in record["env"]  # its name only: the value is in no record
    assert record["subject"] == "tester"


def test_a_denied_call_records_its_rule_with_secrets_redacted(session: Session) -> None:
    record = _one(session, "call.denied", rule="tools.shell.denied_commands")
    assert record["argv"] == ["rm", "--token", "[redacted:secret_flag]"]
    assert record["success"] is False


def test_approvals_asked_and_decided_are_recorded(session: Session) -> None:
    assert len(session.daemon.audit("approval.requested")) == 2
    assert _one(session, "approval.approved")["requester"] == "tester"
    assert _one(session, "approval.denied")["reason"] == "no thanks"


def test_a_timed_out_run_is_recorded_with_its_reason(session: Session) -> None:
    record = _one(session, "run.exited", reason="TIMEOUT")
    assert (record["agent"], record["tool"]) == ("dev", "shell")


def test_a_cancelled_run_is_recorded(session: Session) -> None:
    assert _one(session, "run.exited", reason="CANCELLED")["tool"] == "shell"


def test_a_rate_limited_call_is_recorded(session: Session) -> None:
    record = _one(session, "call.denied", rule="server.rate_limiting")
    assert record["kind"] == "resource_exhausted"


def test_the_policy_load_and_reload_are_recorded(session: Session) -> None:
    assert _one(session, "policy.loaded")["source"].endswith("policy.yaml")
    assert _one(session, "policy.reloaded")["needs_restart"] == []


def test_no_secret_appears_in_the_log_or_the_audit_file(session: Session) -> None:
    text = "".join(session.daemon.stderr_lines) + session.audit_file.read_text()
    for secret in (API_KEY, WRONG_KEY, *SECRETS.values()):
        assert secret not in text


def test_the_audit_file_holds_every_audit_event_of_the_log(session: Session) -> None:
    logged = [json.loads(line)["event"] for line in session.daemon.stderr_lines
              if line.startswith("{") and json.loads(line).get("audit")]
    filed = [json.loads(line)["event"] for line in session.audit_file.read_text().splitlines()]
    assert filed == logged


def test_the_audit_file_verifies(session: Session) -> None:
    result = subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "verify-audit",
                             str(session.audit_file)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("intact: ")
