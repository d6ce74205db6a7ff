"""Audit: every step of a tool call leaves one structured event, and observers watch them.

Events carry who asked, what was decided and which rule decided it. They never carry
environment values, file contents or credentials (any may hold a secret): names and sizes
only, and argv with its secrets redacted (the ``redact`` function the assembly passes in).

The audit is a record, not a debug log: it is written in the configured format to the
configured sink whatever ``logger.level`` says, and every audit event goes through this
class (no module logs ``audit=True`` by hand). The same ``AuditRecord`` goes to each
subscribed ``Observer`` (the audit file, metrics, tracing): observers watch, they never decide,
and one that fails is logged and skipped, never the call's concern.

Every record has ``event``, ``success`` and, inside a gRPC call, ``peer``, ``request_id``
and ``rpc`` (set by the identity step through ``enter_call``); the caller's ``subject`` and
``auth`` method wherever there is one.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from execgate.daemon.model import CommandPlan, Denial, Exit, ExitReason, Plan, Principal, ToolCall

if TYPE_CHECKING:
    from execgate.daemon.approvals import Pending


def record_logger() -> Any:
    """structlog's configured processors and sink, without its level filter."""
    config = structlog.get_config()
    return structlog.wrap_logger(
        config["logger_factory"](), processors=config["processors"],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET))


@dataclass(frozen=True)
class AuditRecord:
    """One audit event as observers see it."""

    event: str
    """What happened, e.g. ``run.exited``."""
    level: str
    """``info``, ``warning`` or ``error``."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Everything else the event records, envelope included."""
    call: CallContext | None = None
    """The gRPC call it happened in, if any."""


class Observer(Protocol):
    """Something that watches audit records (a sink, metrics, tracing)."""

    def observe(self, record: AuditRecord) -> None:
        """Take note of one record; must not block for long."""


@dataclass(frozen=True)
class CallContext:
    """The gRPC call an event belongs to."""

    rpc: str
    peer: str
    request_id: str = field(default_factory=lambda: secrets.token_hex(8))
    traceparent: str = ""
    """The caller's W3C trace context (``traceparent`` metadata), for tracing to continue;
    never trusted for anything else."""
    tracestate: str = ""
    """The caller's W3C ``tracestate`` metadata."""
    arrived: float = field(default_factory=time.monotonic)
    """When the call arrived (``time.monotonic``)."""


_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "audit_call", default=None)
TRACE_CONTEXT_CHARS = 512
"""The longest trace context header kept (W3C's tracestate limit): more is not carried."""


def enter_call(rpc: str, peer: str, traceparent: str = "", tracestate: str = "",
               ) -> CallContext:
    """Mark the running task as serving one call: its events carry the call's envelope."""
    context = CallContext(rpc=rpc, peer=peer,
                          traceparent=traceparent[:TRACE_CONTEXT_CHARS],
                          tracestate=tracestate[:TRACE_CONTEXT_CHARS])
    _call.set(context)
    return context


def current_call() -> CallContext | None:
    """The call the running task serves, if any."""
    return _call.get()


_FAILED_EXITS = frozenset({ExitReason.SANDBOX_ERROR, ExitReason.TOOL_ERROR})


class Audit:
    """Writes audit events, at every configured level, and hands them to its observers."""

    def __init__(self, logger: Any | None = None,
                 redact: Callable[[Sequence[str]], list[str]] = list,
                 observers: Sequence[Observer] = ()) -> None:
        self._log = (logger or record_logger()).bind(audit=True)
        self._redact = redact
        self._observers = list(observers)
        self._runs: dict[str, tuple[str, str]] = {}
        """Running runs' (agent, tool), so that run.exited names them too."""

    def subscribe(self, observer: Observer) -> None:
        """Hand every later record to ``observer`` too."""
        self._observers.append(observer)

    def _emit(self, level: str, event: str, success: bool, **fields: Any) -> None:
        call = _call.get()
        if call is not None:
            fields = {"rpc": call.rpc, "peer": call.peer, "request_id": call.request_id,
                      **fields}
        fields["success"] = success
        getattr(self._log, level)(event, **fields)
        record = AuditRecord(event, level, fields, call)
        for observer in self._observers:
            try:
                observer.observe(record)
            except Exception as exc:  # an observer never takes a call down
                self._log.error("audit.observer_failed", observer=type(observer).__name__,
                                reason=type(exc).__name__, success=False)

    def authenticated(self, principal: Principal) -> None:
        """A credential was verified (anonymous calls are not authentications)."""
        self._emit("info", "auth.succeeded", True, subject=principal.subject,
                   auth=principal.method)

    def unauthenticated(self, method: str, peer: str, denial: Denial, reason: str) -> None:
        """A call refused before it had an identity; ``reason`` is a code (``expired``,
        ``bad_audience`` ...), the denial's message the words."""
        self._emit("warning", "auth.failed", False, method=method, peer=peer,
                   reason=reason, message=denial.message, rule=denial.rule)

    def discovered(self, principal: Principal, agents: Sequence[str]) -> None:
        """The caller listed the agents it may see."""
        self._emit("info", "agents.listed", True, subject=principal.subject,
                   auth=principal.method, agents=list(agents))

    def denied(self, principal: Principal, call: ToolCall, denial: Denial) -> None:
        """A call refused by access, policy or limits."""
        self._emit(
            "warning", "call.denied", False, subject=principal.subject, auth=principal.method,
            agent=call.agent, tool=call.tool, argv=self._redact(call.argv),
            arguments=sorted(call.arguments), cwd=call.cwd, env=sorted(call.env),
            kind=denial.kind.value, rule=denial.rule, reason=denial.message)

    def started(self, run_id: str, principal: Principal, plan: Plan,
                spawn_seconds: float = 0.0) -> None:
        """A call allowed: exactly what runs (its secrets redacted), how long handing it to
        the sandbox took (``spawn_seconds``, ending now), and how long the call waited before
        (since it arrived, approval included)."""
        fields: dict[str, Any] = {"agent": plan.agent, "tool": plan.tool,
                                  "executable": plan.executable,
                                  "timeout": plan.limits.timeout,
                                  "spawn_seconds": round(spawn_seconds, 6)}
        call = _call.get()
        if call is not None:
            waited = time.monotonic() - spawn_seconds - call.arrived
            fields["queue_wait_seconds"] = round(max(waited, 0.0), 6)
        if isinstance(plan, CommandPlan):
            fields.update(argv=self._redact(plan.argv), cwd=str(plan.cwd),
                          env=sorted(plan.env))
        else:
            fields.update(path=plan.arguments.get("path"),
                          arguments={k: len(v) for k, v in plan.arguments.items()})
        self._runs[run_id] = (plan.agent, plan.tool)
        self._emit("info", "run.started", True, run_id=run_id, subject=principal.subject,
                   auth=principal.method, **fields)

    def approval(self, event: str, pending: Pending, decider: Principal | None,
                 reason: str = "") -> None:
        """A request asked, decided, expired or withdrawn."""
        self._emit("info", event, event != "approval.denied", approval_id=pending.id,
                   requester=pending.requester.subject,
                   decider=decider.subject if decider else "", plan_digest=pending.digest,
                   agent=pending.plan.agent, tool=pending.plan.tool, reason=reason)

    def approval_refused(self, approval_id: str, decider: Principal, denial: Denial,
                         pending: Pending | None) -> None:
        """A decision that did not count, and why."""
        self._emit("warning", "approval.refused", False, approval_id=approval_id[:64],
                   decider=decider.subject, rule=denial.rule, reason=denial.message,
                   requester=pending.requester.subject if pending else "",
                   plan_digest=pending.digest if pending else "")

    def exited(self, run_id: str, principal: Principal, exit: Exit) -> None:
        """A run ended: how, and what it cost."""
        agent, tool = self._runs.pop(run_id, ("", ""))
        self._emit(
            "info", "run.exited", exit.reason not in _FAILED_EXITS, run_id=run_id,
            subject=principal.subject, auth=principal.method, agent=agent, tool=tool,
            reason=exit.reason.name, message=exit.message,
            exit_code=exit.exit_code, signal=exit.signal, wall_time=round(exit.wall_time, 6),
            user_time=exit.user_time, system_time=exit.system_time,
            max_rss_bytes=exit.max_rss_bytes, stdout_bytes=exit.stdout_bytes,
            stderr_bytes=exit.stderr_bytes, dropped_bytes=exit.dropped_bytes)

    def run_detached(self, run_id: str, principal: Principal) -> None:
        """The caller that started a detached run went away; the run goes on."""
        self._emit("info", "run.detached", True, run_id=run_id, subject=principal.subject,
                   auth=principal.method)

    def run_attached(self, run_id: str, principal: Principal) -> None:
        """``principal`` attached to a run (AttachRun)."""
        self._emit("info", "run.attached", True, run_id=run_id, subject=principal.subject,
                   auth=principal.method)

    def run_cancelled(self, run_id: str, principal: Principal) -> None:
        """``principal`` cancelled a run (CancelRun): its owner or an operator."""
        self._emit("info", "run.cancelled", True, run_id=run_id, subject=principal.subject,
                   auth=principal.method)

    def run_signalled(self, run_id: str, principal: Principal, signal: int) -> None:
        """``principal`` sent ``signal`` to a run (SignalRun)."""
        self._emit("info", "run.signalled", True, run_id=run_id, subject=principal.subject,
                   auth=principal.method, signal=signal)

    def run_forgotten(self, run_id: str) -> None:
        """A run's retention passed: its exit and output are no longer attachable."""
        self._emit("info", "run.forgotten", True, run_id=run_id)

    def unix_relay(self, internal: str) -> None:
        """The unix sockets' relay is listening on its internal address."""
        self._emit("info", "unix.relay", True, internal=internal,
                   detail="admits only connections relayed from the unix sockets")

    def unix_refused(self, uid: int, pid: int, reason: str) -> None:
        """A unix socket connection refused before any call was read."""
        self._emit("warning", "unix.refused", False, uid=uid, pid=pid, reason=reason)

    def helper_died(self, status: int | None, reason: str) -> None:
        """The sandbox helper died while the daemon was serving; its jobs were lost."""
        self._emit("error", "sandbox.helper_died", False, status=status, reason=reason)

    def helper_restarted(self, pid: int) -> None:
        """A new sandbox helper replaced one that died."""
        self._emit("warning", "sandbox.helper_restarted", True, pid=pid)

    def helper_restart_failed(self, reason: str) -> None:
        """No new sandbox helper could be started: every command call is refused."""
        self._emit("error", "sandbox.helper_restart_failed", False, reason=reason)

    def helper_unanswered(self, missed: int) -> None:
        """The sandbox helper missed ``missed`` watchdog pings in a row: the service manager
        hears nothing from the daemon until it answers (and restarts the service)."""
        self._emit("warning", "sandbox.helper_unanswered", False, missed=missed)

    def policy_loaded(self, source: str) -> None:
        """The daemon started serving this policy."""
        self._emit("info", "policy.loaded", True, source=source)

    def policy_reloaded(self, source: str, needs_restart: list[str]) -> None:
        """A reload is in force for new calls; ``needs_restart`` kept their old values."""
        self._emit("info", "policy.reloaded", True, source=source, needs_restart=needs_restart)

    def policy_reload_refused(self, source: str, errors: list[str]) -> None:
        """A reload was refused; the policy in force stays."""
        self._emit("warning", "policy.reload_refused", False, source=source, errors=errors)

    def draining(self, runs: int, timeout: float) -> None:
        """The daemon takes no new calls; running ones have ``timeout`` seconds to end."""
        self._emit("info", "server.draining", True, runs=runs, drain_timeout=timeout)
