"""W3C trace context for the daemon: the caller's active span, as ``traceparent`` (and
``tracestate``) gRPC metadata, so that the daemon's spans continue the caller's trace.

Only when opentelemetry-api is importable: the client needs nothing beyond grpcio and
protobuf, and without OpenTelemetry (or without an active span) no metadata is added.
"""

from __future__ import annotations

try:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    _PROPAGATOR: TraceContextTextMapPropagator | None = TraceContextTextMapPropagator()
except ImportError:  # no OpenTelemetry here: calls carry no trace context
    _PROPAGATOR = None


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's trace context as gRPC metadata; empty without one."""
    if _PROPAGATOR is None:
        return ()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)  # nothing for an invalid (absent) span
    return tuple(carrier.items())
