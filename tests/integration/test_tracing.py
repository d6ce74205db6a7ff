"""OpenTelemetry spans from a real daemon, received by an in-process OTLP collector: one
span per tool call, continuing the caller's trace, with its steps as children."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from execgate.client import ApprovalDecision, PolicyDeniedError
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon
from tests.otlp import Collector

ARGV_SECRET = "hunter2-argv-secret"
STEPS = {"authenticate", "policy", "spawn", "run"}


def _policy(port: int) -> str:
    return TEST_POLICY.replace(
        "server:\n", "server:\n  observability:\n    tracing: {enabled: true, endpoint: "
                     f"'http://127.0.0.1:{port}', service_name: execgated-test}}\n", 1
    ).replace("    denied_commands: [rm]\n",
              "    denied_commands: [rm]\n    require_approval_for: [touch]\n")


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Daemon]:
    # Batches leave every 50 ms, so that spans arrive while the daemon serves.
    d = start_daemon(tmp_path_factory.mktemp("tracing"), _policy(collector.port),
                     env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    yield d
    d.stop()


def _attributes(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


def _traced(daemon: Daemon, collector: Collector, steps: set[str],
            call: Callable[[Daemon], object]) -> tuple[int, int, list[Span]]:
    """Run ``call`` inside a span of the test's own tracer; that span's trace and span ids,
    and the trace's spans once ``steps`` have arrived."""
    tracer = TracerProvider().get_tracer("agent")
    with tracer.start_as_current_span("agent.step") as caller:
        call(daemon)
    context = caller.get_span_context()
    return (context.trace_id, context.span_id,
            collector.trace(context.trace_id.to_bytes(16, "big"), steps))


def _run(argv: list[str]) -> Callable[[Daemon], object]:
    def run(daemon: Daemon) -> object:
        with daemon.client() as c:
            return c.run(argv, agent="dev")
    return run


def _stream(argv: list[str]) -> Callable[[Daemon], object]:
    """An Execute stream (the client takes one for a call with an approval callback)."""
    def stream(daemon: Daemon) -> object:
        with daemon.client() as c:
            return list(c.stream(argv, agent="dev", on_approval=lambda r: True))
    return stream


def _call_span(spans: list[Span], method: str = "RunToExit") -> Span:
    """The call's span: ``client.run`` is a RunToExit call, one with a callback an Execute."""
    [call] = [s for s in spans if s.name == f"execgate.v1.ExecService/{method}"]
    return call


def test_the_call_span_continues_the_callers_trace(daemon: Daemon,
                                                   collector: Collector) -> None:
    """The client sends its span's traceparent; the daemon's call span is its child."""
    _, caller_span, spans = _traced(daemon, collector, STEPS, _run(["true"]))
    call = _call_span(spans)
    assert call.parent_span_id == caller_span.to_bytes(8, "big")
    assert call.kind == Span.SPAN_KIND_SERVER


def test_an_execute_stream_is_a_call_span_with_every_step(daemon: Daemon,
                                                          collector: Collector) -> None:
    _, _, spans = _traced(daemon, collector, STEPS, _stream(["true"]))
    call = _call_span(spans, "Execute")
    assert sorted(s.name for s in spans if s.parent_span_id == call.span_id) == sorted(STEPS)


def test_each_step_is_a_child_of_the_call_span(daemon: Daemon, collector: Collector) -> None:
    _, _, spans = _traced(daemon, collector, STEPS, _run(["true"]))
    call = _call_span(spans)
    children = [s for s in spans if s.parent_span_id == call.span_id]
    assert sorted(s.name for s in children) == sorted(STEPS)
    for child in children:
        assert call.start_time_unix_nano <= child.start_time_unix_nano
        assert child.start_time_unix_nano <= child.end_time_unix_nano


def test_the_steps_follow_each_other(daemon: Daemon, collector: Collector) -> None:
    """authenticate, policy, spawn and run do not overlap, in that order."""
    _, _, spans = _traced(daemon, collector, STEPS, _run(["true"]))
    by_name = {s.name: s for s in spans}
    order = [by_name[n] for n in ("authenticate", "policy", "spawn", "run")]
    for earlier, later in itertools.pairwise(order):
        assert earlier.end_time_unix_nano <= later.start_time_unix_nano


def test_the_policy_span_carries_the_decision(daemon: Daemon, collector: Collector) -> None:
    _, _, spans = _traced(daemon, collector, STEPS, _run(["true"]))
    [policy] = [s for s in spans if s.name == "policy"]
    assert _attributes(policy)["execgate.decision"] == "allow"
    assert _attributes(policy)["execgate.rule"] == "tools.shell"


def test_the_run_span_carries_how_the_run_ended(daemon: Daemon, collector: Collector) -> None:
    _, _, spans = _traced(daemon, collector, STEPS, _run(["sh", "-c", "printf abc; exit 3"]))
    [run] = [s for s in spans if s.name == "run"]
    attributes = _attributes(run)
    assert attributes["execgate.exit.reason"] == "EXITED"
    assert attributes["execgate.exit.code"] == 3
    assert attributes["execgate.stdout_bytes"] == 3
    assert attributes["execgate.tool"] == "shell"


def test_a_denied_calls_span_carries_the_rule(daemon: Daemon, collector: Collector) -> None:
    def denied(daemon: Daemon) -> None:
        with daemon.client() as c, pytest.raises(PolicyDeniedError):
            c.run(["rm", "x"], agent="dev")

    _, _, spans = _traced(daemon, collector, {"authenticate", "policy"}, denied)
    [policy] = [s for s in spans if s.name == "policy"]
    assert _attributes(policy)["execgate.decision"] == "deny"
    assert _attributes(policy)["execgate.rule"] == "tools.shell.denied_commands"
    assert _call_span(spans).status.code == Status.STATUS_CODE_ERROR
    assert not {"spawn", "run"} & {s.name for s in spans}


def test_an_approved_call_has_an_approval_wait_span(daemon: Daemon,
                                                    collector: Collector) -> None:
    def approved(daemon: Daemon) -> object:
        with daemon.client() as c:
            return c.run(["touch", "approved.txt"], agent="dev",
                         on_approval=lambda r: ApprovalDecision(True))

    _, _, spans = _traced(daemon, collector, STEPS | {"approval"}, approved)
    by_name = {s.name: s for s in spans}
    assert _attributes(by_name["policy"])["execgate.decision"] == "ask"
    assert _attributes(by_name["approval"])["execgate.approval.outcome"] == "approved"
    assert by_name["approval"].parent_span_id == _call_span(spans, "Execute").span_id
    assert by_name["policy"].end_time_unix_nano <= by_name["approval"].start_time_unix_nano
    assert by_name["approval"].end_time_unix_nano <= by_name["spawn"].start_time_unix_nano


def test_a_call_without_trace_context_starts_a_trace(daemon: Daemon,
                                                     collector: Collector) -> None:
    with daemon.client() as c:
        run_id = c.run(["true"], agent="dev").run_id
    run = collector.first(lambda s: s.name == "run"
                          and _attributes(s).get("execgate.run_id") == run_id)
    call = collector.first(lambda s: s.span_id == run.parent_span_id)
    assert call.parent_span_id == b""


def test_a_callers_unsampled_trace_is_not_exported(daemon: Daemon,
                                                  collector: Collector) -> None:
    """The caller's sampling decision (its traceparent flags) holds for the daemon's spans."""
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("agent")
    with unsampled.start_as_current_span("agent.step") as caller:
        _run(["true"])(daemon)
    _traced(daemon, collector, STEPS, _run(["true"]))  # exported after it, had it been
    trace_id = caller.get_span_context().trace_id.to_bytes(16, "big")
    assert not [s for s in collector.spans if s.trace_id == trace_id]


def test_no_secret_appears_in_any_span(daemon: Daemon, collector: Collector) -> None:
    """Neither the caller's token nor a secret on its command line reaches a span."""
    _, _, spans = _traced(daemon, collector, STEPS,
                          _run(["echo", f"--password={ARGV_SECRET}"]))
    values = [str(v) for s in spans for v in _attributes(s).values()]
    values += [s.name for s in spans] + [s.status.message for s in spans]
    values += [v for r in collector.resources for v in r.values()]
    for secret in (API_KEY, ARGV_SECRET):
        assert not any(secret in value for value in values)


def test_spans_carry_the_configured_service_name(daemon: Daemon,
                                                 collector: Collector) -> None:
    _traced(daemon, collector, STEPS, _run(["true"]))
    assert {r.get("service.name") for r in collector.resources} == {"execgated-test"}


def test_spans_are_flushed_when_the_daemon_stops(tmp_path: Path,
                                                 collector: Collector) -> None:
    """A batch not yet due is exported on the way out, not lost."""
    d = start_daemon(tmp_path, _policy(collector.port),
                     env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
    try:
        with d.client() as c:
            run_id = c.run(["true"], agent="dev").run_id
    finally:
        assert d.stop() == 0
    assert any(_attributes(s).get("execgate.run_id") == run_id for s in collector.spans)


def test_the_daemon_serves_without_the_otel_extra(tmp_path: Path) -> None:
    """Tracing on, the extra missing: calls run, and the daemon says no spans leave."""
    hidden = tmp_path / "hidden"
    (hidden / "opentelemetry").mkdir(parents=True)
    (hidden / "opentelemetry" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'opentelemetry'\", "
        "name='opentelemetry')\n")
    d = start_daemon(tmp_path, _policy(1), env={
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hidden),
                                                    os.environ.get("PYTHONPATH")]))})
    try:
        with d.client() as c:
            assert c.run(["true"], agent="dev").exit_code == 0
        with d.said:
            assert d.said.wait_for(lambda: any('"tracing.unavailable"' in line
                                               for line in d.stderr_lines), timeout=10)
    finally:
        d.stop()

