"""OpenTelemetry tracing: each tool call's audit records become spans, exported over
OTLP/gRPC with the SDK's batch processor (the ``otel`` extra; import this module only when
tracing is on).

One span per tool call (an Execute, a Run or a RunToExit, kind SERVER), continuing the
caller's W3C trace context (its ``traceparent`` and ``tracestate`` metadata), with a child
for each step it went through: ``authenticate``, ``policy`` (decision and rule),
``approval`` (the wait for a person), ``spawn`` and ``run`` (how it ended, bytes). A call's
spans are built when the call ends (its run exited, or it was refused), from the times its
records were seen, and handed to the batch processor finished; a detached run's call ends
with its run. A caller's trace that is not sampled (its ``traceparent`` flags) is not
exported; every other call is.

Spans carry only what the audit already records, and of that only names, decisions, rules,
reason codes, ids and sizes: never an argv, a subject, a peer, an environment value or a
message (any may hold a secret or a caller's words).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import (
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        get_current_span,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as missing:  # the daemon runs without the extra: it says so and goes on
    raise ImportError("tracing needs the otel extra: pip install 'execgate[otel]'",
                      name=missing.name) from missing

from execgate.daemon.audit import AuditRecord, CallContext

Attributes = dict[str, str | int | float | bool]
TRACED_RPCS = frozenset({"/execgate.v1.ExecService/Execute", "/execgate.v1.ExecService/Run",
                         "/execgate.v1.ExecService/RunToExit"})
MAX_OPEN_CALLS = 10_000
"""Calls followed at once; past it the oldest is dropped unexported. A call that ends
without a record saying so (a caller gone before its first message) must not pile up."""
_SCOPE = InstrumentationScope("execgate.daemon")
_UNSET, _ERROR = Status(StatusCode.UNSET), Status(StatusCode.ERROR)
_CALL_STEPS = frozenset({"auth.succeeded", "auth.failed", "call.denied", "approval.requested",
                         "run.started"})
"""The records that begin or continue a call (a run forgotten later does neither)."""
_APPROVAL_ENDS = frozenset({"approval.approved", "approval.denied", "approval.expired",
                            "approval.withdrawn", "approval.cancelled"})


@dataclass(frozen=True)
class _Step:
    """One step of a call, from ``start`` to ``end`` (wall-clock nanoseconds)."""

    name: str
    start: int
    end: int
    attributes: Attributes
    failed: bool = False


@dataclass
class _Call:
    """What is known of one tool call while it goes on."""

    context: CallContext
    arrived: int
    """Wall-clock nanoseconds."""
    steps: list[_Step] = field(default_factory=list)
    mark: int = 0
    """When the last step ended: the next begins there."""
    attributes: Attributes = field(default_factory=dict)
    asked: int = 0
    """When an approval request went out (0: none pending)."""
    run_started: int = 0
    """When its run started (0: not yet)."""

    def step(self, name: str, start: int, end: int, attributes: Mapping[str, Any],
             failed: bool = False) -> None:
        self.steps.append(_Step(name, start, end, _present(attributes), failed))
        self.mark = end

    def decided(self) -> bool:
        return any(step.name == "policy" for step in self.steps)


def _present(attributes: Mapping[str, Any]) -> Attributes:
    """Attributes with a value (OpenTelemetry takes no None)."""
    return {f"execgate.{k}": v for k, v in attributes.items() if v is not None}


class Tracing:
    """An audit observer exporting each tool call's spans; ``close`` flushes them."""

    def __init__(self, service_name: str, endpoint: str | None,
                 exporter: SpanExporter | None = None) -> None:
        """Spans of ``service_name``, to the OTLP/gRPC collector at ``endpoint`` (None: the
        SDK's default and environment), or to ``exporter``."""
        self._resource = Resource.create({"service.name": service_name})
        self._processor = BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=endpoint))
        self._ids = RandomIdGenerator()
        self._propagator = TraceContextTextMapPropagator()
        self._lock = threading.Lock()  # the audit may be called from any thread
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        """Calls going on, by request id, the oldest first."""
        self._approvals: dict[str, _Call] = {}
        """Calls waiting for a person, by approval id (a decision may come from elsewhere)."""
        self._runs: dict[str, _Call] = {}
        """Calls whose run goes on, by run id (it may end after its stream did)."""

    def observe(self, record: AuditRecord) -> None:
        """Note one record; export a call's spans when it ends."""
        now = time.time_ns()
        fields = record.fields
        with self._lock:
            if record.event in _APPROVAL_ENDS:
                self._approval_ended(record.event, fields, now)
            elif record.event == "run.exited":
                self._run_exited(fields, now)
            elif (record.event in _CALL_STEPS and record.call is not None
                  and record.call.rpc in TRACED_RPCS):
                self._during(record, self._call(record.call, now), now)

    def close(self) -> None:
        """Export what has ended and stop (calls still going on are not exported)."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK's, untyped

    # -- a call's records ----------------------------------------------------------------

    def _call(self, context: CallContext, now: int) -> _Call:
        call = self._calls.get(context.request_id)
        if call is None:
            arrived = now - int((time.monotonic() - context.arrived) * 1e9)
            call = self._calls[context.request_id] = _Call(context, arrived, mark=arrived)
            if len(self._calls) > MAX_OPEN_CALLS:
                self._forget(self._calls.popitem(last=False)[1])
        return call

    def _during(self, record: AuditRecord, call: _Call, now: int) -> None:
        event, fields = record.event, record.fields
        if event == "auth.succeeded":
            call.step("authenticate", call.arrived, now, {"auth.method": fields["auth"]})
        elif event == "auth.failed":
            call.step("authenticate", call.arrived, now, {
                "auth.reason": fields["reason"], "rule": fields["rule"] or None}, failed=True)
            self._end(call, now, f"authentication failed: {fields['reason']}")
        elif event == "call.denied":
            denial = {"rule": fields["rule"] or None, "denial.kind": fields["kind"]}
            if call.decided():  # approved, then refused at a cap
                call.attributes.update(_present(denial))
            else:
                call.step("policy", call.mark, now, {"decision": "deny", **denial}, failed=True)
            self._end(call, now, f"denied: {fields['kind']}")
        elif event == "approval.requested":
            call.step("policy", call.mark, now,
                      {"decision": "ask", "rule": f"tools.{fields['tool']}"})
            call.attributes.update(_present({"agent": fields["agent"], "tool": fields["tool"]}))
            call.asked = now
            self._approvals[fields["approval_id"]] = call
        elif event == "run.started":
            # the spawn's own duration, measured around it; never before the last step ended
            spawning = max(now - int(fields["spawn_seconds"] * 1e9), call.mark)
            if not call.decided():
                call.step("policy", call.mark, spawning,
                          {"decision": "allow", "rule": f"tools.{fields['tool']}"})
            call.step("spawn", spawning, now, {"executable": fields["executable"]})
            call.attributes.update(_present({"agent": fields["agent"], "tool": fields["tool"],
                                             "run_id": fields["run_id"]}))
            call.run_started = now
            self._runs[fields["run_id"]] = call

    def _approval_ended(self, event: str, fields: Mapping[str, Any], now: int) -> None:
        call = self._approvals.pop(fields["approval_id"], None)
        if call is None:
            return
        outcome = event.removeprefix("approval.")
        call.step("approval", call.asked, now, {"approval.outcome": outcome},
                  failed=outcome != "approved")
        call.asked = 0
        if outcome != "approved":
            self._end(call, now, f"approval {outcome}")

    def _run_exited(self, fields: Mapping[str, Any], now: int) -> None:
        call = self._runs.pop(fields["run_id"], None)
        if call is None:
            return
        failed = not fields["success"]
        call.step("run", call.run_started, now, {
            "run_id": fields["run_id"], "agent": fields["agent"] or None,
            "tool": fields["tool"] or None, "exit.reason": fields["reason"],
            "exit.code": fields["exit_code"], "exit.signal": fields["signal"],
            "stdout_bytes": fields["stdout_bytes"], "stderr_bytes": fields["stderr_bytes"],
            "dropped_bytes": fields["dropped_bytes"]}, failed=failed)
        self._end(call, now, f"run ended: {fields['reason']}" if failed else None)

    # -- export --------------------------------------------------------------------------

    def _forget(self, call: _Call) -> None:
        self._calls.pop(call.context.request_id, None)
        for index in (self._approvals, self._runs):
            for key in [k for k, c in index.items() if c is call]:
                del index[key]

    def _end(self, call: _Call, now: int, error: str | None) -> None:
        """Export the call's span and its steps' spans, unless the caller's trace context
        says its trace is not sampled."""
        self._forget(call)
        context = call.context
        carrier = {k: v for k, v in (("traceparent", context.traceparent),
                                     ("tracestate", context.tracestate)) if v}
        parent: SpanContext | None = get_current_span(
            self._propagator.extract(carrier)).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
        elif not parent.trace_flags.sampled:
            return
        span = SpanContext(parent.trace_id if parent else self._ids.generate_trace_id(),
                           self._ids.generate_span_id(), is_remote=False,
                           trace_flags=TraceFlags(TraceFlags.SAMPLED),
                           trace_state=parent.trace_state if parent else None)
        service, _, method = context.rpc.lstrip("/").partition("/")
        self._export(context.rpc.lstrip("/"), span, parent, call.arrived, now, {
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
            "execgate.request_id": context.request_id, **call.attributes},
            Status(StatusCode.ERROR, error) if error is not None else _UNSET,
            SpanKind.SERVER)
        for step in call.steps:
            child = SpanContext(span.trace_id, self._ids.generate_span_id(), is_remote=False,
                                trace_flags=span.trace_flags, trace_state=span.trace_state)
            self._export(step.name, child, span, step.start, step.end, step.attributes,
                         _ERROR if step.failed else _UNSET)

    def _export(self, name: str, span: SpanContext, parent: SpanContext | None, start: int,
                end: int, attributes: Attributes, status: Status,
                kind: SpanKind = SpanKind.INTERNAL) -> None:
        # A finished span, straight to the batch processor: the spans are built once their
        # times are known, so the tracer's live-span machinery would only cost time.
        self._processor.on_end(ReadableSpan(
            name, span, parent, self._resource, attributes, kind=kind, status=status,
            start_time=start, end_time=end, instrumentation_scope=_SCOPE))
