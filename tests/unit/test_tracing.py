"""The tracing observer on its own: audit records in, finished spans out (to an in-memory
exporter, flushed by ``close``), for the paths a daemon test reaches only with effort."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from execgate.daemon import tracing as tracing_module
from execgate.daemon.audit import AuditRecord, CallContext
from execgate.daemon.tracing import Tracing

EXITED = {"agent": "dev", "tool": "shell", "reason": "EXITED", "exit_code": 0, "signal": None,
          "stdout_bytes": 0, "stderr_bytes": 0, "dropped_bytes": 0, "success": True}


class Observed:
    """A Tracing with an in-memory exporter, and records to feed it."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracing = Tracing("test", None, self.exporter)

    def record(self, event: str, call: CallContext | None, **fields: Any) -> None:
        self.tracing.observe(AuditRecord(event, "info", fields, call))

    def spans(self) -> list[ReadableSpan]:
        """Every span exported, once the observer is closed (which flushes)."""
        self.tracing.close()
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def observed() -> Iterator[Observed]:
    o = Observed()
    yield o
    o.tracing.close()


def _execute() -> CallContext:
    return CallContext("/execgate.v1.ExecService/Execute", "ipv4:127.0.0.1:1")


def _approved_call(o: Observed, call: CallContext) -> None:
    o.record("auth.succeeded", call, auth="api_key")
    o.record("approval.requested", call, approval_id="a1", agent="dev", tool="shell")
    # decided by an approver in a call of its own: matched by the approval's id
    o.record("approval.approved", CallContext("/x.ApprovalService/DecideApproval", "p"),
             approval_id="a1")


def test_a_failed_authentication_ends_the_call(observed: Observed) -> None:
    observed.record("auth.failed", _execute(), reason="expired", rule="server.auth")
    spans = {s.name: s for s in observed.spans()}
    assert set(spans) == {"execgate.v1.ExecService/Execute", "authenticate"}
    assert spans["authenticate"].attributes == {"execgate.auth.reason": "expired",
                                                "execgate.rule": "server.auth"}
    assert spans["execgate.v1.ExecService/Execute"].status.status_code == StatusCode.ERROR


def test_a_cap_refusal_after_approval_marks_the_call_span(observed: Observed) -> None:
    """The policy said ask and a person approved; the run cap then refused it."""
    call = _execute()
    _approved_call(observed, call)
    observed.record("call.denied", call, kind="resource_exhausted",
                    rule="runs.max_running_per_principal")
    spans = {s.name: s for s in observed.spans()}
    assert spans["policy"].attributes == {"execgate.decision": "ask",
                                          "execgate.rule": "tools.shell"}
    call_span = spans["execgate.v1.ExecService/Execute"]
    assert call_span.attributes is not None
    assert call_span.attributes["execgate.rule"] == "runs.max_running_per_principal"
    assert call_span.status.description == "denied: resource_exhausted"


def test_a_withdrawn_approval_ends_the_call(observed: Observed) -> None:
    call = _execute()
    observed.record("auth.succeeded", call, auth="api_key")
    observed.record("approval.requested", call, approval_id="a2", agent="dev", tool="shell")
    observed.record("approval.withdrawn", call, approval_id="a2")
    spans = {s.name: s for s in observed.spans()}
    assert spans["approval"].attributes == {"execgate.approval.outcome": "withdrawn"}
    assert spans["execgate.v1.ExecService/Execute"].status.status_code == StatusCode.ERROR


def test_records_after_a_call_ended_open_nothing(observed: Observed) -> None:
    """A run forgotten after its retention belongs to a call already exported."""
    call = _execute()
    observed.record("auth.succeeded", call, auth="api_key")
    observed.record("run.started", call, run_id="r1", agent="dev", tool="shell",
                    executable="/usr/bin/true", spawn_seconds=0.001)
    observed.record("run.exited", call, run_id="r1", **EXITED)
    observed.record("run.forgotten", call, run_id="r1")
    assert observed.tracing._calls == {}
    assert len(observed.spans()) == 5


def test_calls_that_never_end_are_bounded(observed: Observed,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller gone before its first message leaves no end; the oldest such call goes."""
    monkeypatch.setattr(tracing_module, "MAX_OPEN_CALLS", 3)
    calls = [_execute() for _ in range(5)]
    for call in calls:
        observed.record("auth.succeeded", call, auth="api_key")
    assert list(observed.tracing._calls) == [c.request_id for c in calls[2:]]
    assert observed.spans() == []


def test_other_rpcs_are_not_traced(observed: Observed) -> None:
    observed.record("auth.succeeded", CallContext("/x.AgentService/ListAgents", "p"),
                    auth="api_key")
    observed.record("policy.loaded", None, source="p.yaml")
    assert observed.spans() == []
