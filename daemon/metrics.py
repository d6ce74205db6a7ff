"""Prometheus metrics, fed by the audit's records and served on their own HTTP address.

Labels are low-cardinality only: policy names (agent, tool, rule), outcomes and reason codes.
Never an argv, a subject, a run id or a name a caller made up: an agent or tool the policy
does not have is counted as ``(unknown)``.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from execgate.daemon.audit import AuditRecord

UNKNOWN = "(unknown)"
_CALLER_NAMED = {"invalid_argument": ("agent", "tool"), "agent_not_found": ("agent", "tool"),
                 "tool_not_found": ("tool",)}
"""Denial kinds whose agent or tool is the caller's word, not a policy name."""
_KILLS = frozenset({"TIMEOUT", "IDLE_TIMEOUT", "OUTPUT_LIMIT", "MEMORY_LIMIT", "PIDS_LIMIT",
                    "CANCELLED", "DAEMON_STOPPING"})
_PENDING_ENDS = frozenset({"approval.approved", "approval.denied", "approval.expired",
                           "approval.withdrawn", "approval.cancelled"})
_BYTES = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
_SPAWN = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""From a tenth of a millisecond: handing a job to a waiting init takes a few."""
_WAIT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0)
"""Up to minutes: a wait includes any approval's."""


class Metrics:
    """The daemon's metrics, in a registry of its own (with the process collector)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.calls = Counter("execgate_calls", "Tool calls by agent, tool and outcome "
                             "(denied, or how the run ended).",
                             ["agent", "tool", "outcome"], registry=r)
        self.denials = Counter("execgate_denials", "Calls refused, by the rule that refused.",
                               ["rule"], registry=r)
        self.refusals = Counter("execgate_limit_refusals", "Calls refused by a rate limit "
                                "or a cap, by its setting.", ["limit"], registry=r)
        self.approvals = Counter("execgate_approvals", "Approval events by outcome.",
                                 ["outcome"], registry=r)
        self.auth_failures = Counter("execgate_auth_failures", "Failed authentications by "
                                     "reason code.", ["reason"], registry=r)
        self.kills = Counter("execgate_sandbox_kills", "Runs the daemon stopped, by reason.",
                             ["reason"], registry=r)
        self.running = Gauge("execgate_runs_running", "Runs in progress.", registry=r)
        self.pending = Gauge("execgate_approvals_pending", "Approval requests waiting.",
                             registry=r)
        self.duration = Histogram("execgate_run_duration_seconds", "Wall time of runs.",
                                  ["tool"], registry=r)
        self.output = Histogram("execgate_run_output_bytes", "stdout plus stderr bytes of "
                                "runs.", ["tool"], buckets=_BYTES, registry=r)
        self.spawn = Histogram("execgate_spawn_seconds", "Time to hand a run to the sandbox "
                               "once its plan was accepted.", ["tool"], buckets=_SPAWN,
                               registry=r)
        self.queue_wait = Histogram("execgate_queue_wait_seconds", "Time from a call's "
                                    "arrival to the start of its spawn (authentication, "
                                    "limits, policy and any approval).", ["tool"],
                                    buckets=_WAIT, registry=r)

    def observe(self, record: AuditRecord) -> None:
        """Count one audit record."""
        event, fields = record.event, record.fields
        if event == "call.denied":
            named = _CALLER_NAMED.get(fields["kind"], ())
            # a tool the caller left for the agent to imply is not known here: the rule is
            self.calls.labels(UNKNOWN if "agent" in named else fields["agent"] or UNKNOWN,
                              UNKNOWN if "tool" in named else fields["tool"] or UNKNOWN,
                              "denied").inc()
            self.denials.labels(fields["rule"]).inc()
            if fields["kind"] == "resource_exhausted":
                self.refusals.labels(fields["rule"]).inc()
        elif event == "run.started":
            self.running.inc()
            self.spawn.labels(fields["tool"]).observe(fields["spawn_seconds"])
            if "queue_wait_seconds" in fields:  # a call over gRPC, not the daemon's own
                self.queue_wait.labels(fields["tool"]).observe(fields["queue_wait_seconds"])
        elif event == "run.exited":
            self.running.dec()
            reason = str(fields["reason"])
            self.calls.labels(fields["agent"] or UNKNOWN, fields["tool"] or UNKNOWN,
                              reason.lower()).inc()
            self.duration.labels(fields["tool"] or UNKNOWN).observe(fields["wall_time"])
            self.output.labels(fields["tool"] or UNKNOWN).observe(
                fields["stdout_bytes"] + fields["stderr_bytes"])
            if reason in _KILLS:
                self.kills.labels(reason.lower()).inc()
        elif event == "auth.failed":
            self.auth_failures.labels(fields["reason"]).inc()
            if fields["reason"] == "too_many_failures":
                self.refusals.labels(fields["rule"]).inc()
        elif event.startswith("approval."):
            self.approvals.labels(event.removeprefix("approval.")).inc()
            if event == "approval.requested":
                self.pending.inc()
            elif event in _PENDING_ENDS:
                self.pending.dec()

    def serve(self, listen: str) -> MetricsServer:
        """Serve ``/metrics`` on ``listen`` (``HOST:PORT``) from a thread of its own."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), host.strip("[]"), registry=self.registry)
        return MetricsServer(server)


class MetricsServer:
    """The running metrics endpoint."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.address = f"{host!s}:{port}"
        """Where it listens, the port as bound."""

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
