"""Audit: every step of a tool call leaves one structured event.

Events carry who asked, what was decided and which rule decided it. They never carry
environment values or file contents (either may hold a secret): names and sizes only.

The audit is a record, not a debug log: it is written in the configured format to the
configured sink whatever ``logger.level`` says, and every audit event goes through this
class (no module logs ``audit=True`` by hand).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import structlog

from execgate.daemon.model import CommandPlan, Denial, Exit, Plan, Principal, ToolCall

if TYPE_CHECKING:
    from execgate.daemon.approvals import Pending


def record_logger() -> Any:
    """structlog's configured processors and sink, without its level filter."""
    config = structlog.get_config()
    return structlog.wrap_logger(
        config["logger_factory"](), processors=config["processors"],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET))


class Audit:
    """Writes audit events, at every configured level."""

    def __init__(self, logger: Any | None = None) -> None:
        self._log = (logger or record_logger()).bind(audit=True)

    def unauthenticated(self, method: str, peer: str, denial: Denial) -> None:
        """A call refused before it had an identity."""
        self._log.warning("call.unauthenticated", method=method, peer=peer, reason=denial.message)

    def denied(self, principal: Principal, call: ToolCall, denial: Denial) -> None:
        """A call refused by access, policy or limits."""
        self._log.warning(
            "call.denied", subject=principal.subject, auth=principal.method, agent=call.agent,
            tool=call.tool, argv=list(call.argv), arguments=sorted(call.arguments),
            cwd=call.cwd, env=sorted(call.env), kind=denial.kind.value, rule=denial.rule,
            reason=denial.message)

    def started(self, run_id: str, principal: Principal, plan: Plan) -> None:
        """A call allowed: exactly what runs."""
        fields: dict[str, Any] = {"agent": plan.agent, "tool": plan.tool,
                                  "executable": plan.executable,
                                  "timeout": plan.limits.timeout}
        if isinstance(plan, CommandPlan):
            fields.update(argv=list(plan.argv), cwd=str(plan.cwd), env=sorted(plan.env))
        else:
            fields.update(path=plan.arguments.get("path"),
                          arguments={k: len(v) for k, v in plan.arguments.items()})
        self._log.info("run.started", run_id=run_id, subject=principal.subject,
                       auth=principal.method, **fields)

    def approval(self, event: str, pending: Pending, decider: Principal | None,
                 reason: str = "") -> None:
        """A request asked, decided, expired or withdrawn."""
        self._log.info(event, approval_id=pending.id, requester=pending.requester.subject,
                       decider=decider.subject if decider else "", plan_digest=pending.digest,
                       agent=pending.plan.agent, tool=pending.plan.tool, reason=reason)

    def approval_refused(self, approval_id: str, decider: Principal, denial: Denial,
                         pending: Pending | None) -> None:
        """A decision that did not count, and why."""
        self._log.warning("approval.refused", approval_id=approval_id[:64],
                          decider=decider.subject, rule=denial.rule, reason=denial.message,
                          requester=pending.requester.subject if pending else "",
                          plan_digest=pending.digest if pending else "")

    def exited(self, run_id: str, principal: Principal, exit: Exit) -> None:
        """A run ended: how, and what it cost."""
        self._log.info(
            "run.exited", run_id=run_id, subject=principal.subject, reason=exit.reason.name,
            message=exit.message,
            exit_code=exit.exit_code, signal=exit.signal, wall_time=round(exit.wall_time, 6),
            user_time=exit.user_time, system_time=exit.system_time,
            max_rss_bytes=exit.max_rss_bytes, stdout_bytes=exit.stdout_bytes,
            stderr_bytes=exit.stderr_bytes, dropped_bytes=exit.dropped_bytes)

    def unix_relay(self, internal: str) -> None:
        """The unix sockets' relay is listening on its internal address."""
        self._log.info("unix.relay", internal=internal,
                       detail="admits only connections relayed from the unix sockets")

    def unix_refused(self, uid: int, pid: int, reason: str) -> None:
        """A unix socket connection refused before any call was read."""
        self._log.warning("unix.refused", uid=uid, pid=pid, reason=reason)

    def helper_died(self, status: int | None, reason: str) -> None:
        """The sandbox helper died while the daemon was serving; its jobs were lost."""
        self._log.error("sandbox.helper_died", status=status, reason=reason)

    def helper_restarted(self, pid: int) -> None:
        """A new sandbox helper replaced one that died."""
        self._log.warning("sandbox.helper_restarted", pid=pid)

    def helper_restart_failed(self, reason: str) -> None:
        """No new sandbox helper could be started: every command call is refused."""
        self._log.error("sandbox.helper_restart_failed", reason=reason)

    def helper_unanswered(self, missed: int) -> None:
        """The sandbox helper missed ``missed`` watchdog pings in a row: the service manager
        hears nothing from the daemon until it answers (and restarts the service)."""
        self._log.warning("sandbox.helper_unanswered", missed=missed)

    def policy_reloaded(self, source: str, needs_restart: list[str]) -> None:
        """A reload is in force for new calls; ``needs_restart`` kept their old values."""
        self._log.info("policy.reloaded", source=source, needs_restart=needs_restart)

    def policy_reload_refused(self, source: str, errors: list[str]) -> None:
        """A reload was refused; the policy in force stays."""
        self._log.warning("policy.reload_refused", source=source, errors=errors)

    def draining(self, runs: int, timeout: float) -> None:
        """The daemon takes no new calls; running ones have ``timeout`` seconds to end."""
        self._log.info("server.draining", runs=runs, drain_timeout=timeout)
