"""Errors raised by execgate's client.

    ExecgateError                   every error this package raises
    ├── RPCError                    the daemon (or the channel) answered with a gRPC error
    │   ├── AuthenticationError         no or bad credentials (UNAUTHENTICATED)
    │   ├── PermissionDeniedError       refused (PERMISSION_DENIED)
    │   │   ├── PolicyDeniedError           a policy rule refused the call; see ``rule``
    │   │   └── ApprovalDeniedError         a human (or the clock) refused the call
    │   ├── NotFoundError               no such agent or tool (NOT_FOUND)
    │   │   └── CommandNotFoundError        the command is allowed but not on the daemon's PATH
    │   ├── InvalidArgumentError        the request itself is malformed (INVALID_ARGUMENT)
    │   ├── RateLimitedError            too many calls (RESOURCE_EXHAUSTED); see ``retry_after``
    │   └── UnavailableError            the daemon cannot be reached or cannot run it now
    ├── CommandFailedError          ``run(..., check=True)``: the command did not exit 0
    └── ProtocolError               the daemon's stream broke the API's contract

Every RPCError carries ``status`` (a ``grpc.StatusCode``), ``error`` (the daemon's
machine-readable kind, e.g. ``policy_denied``) and ``rule`` (the policy key that refused).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from execgate.client._models import RunResult, TextRunResult


class ExecgateError(Exception):
    """Root of every error this package raises."""


class RPCError(ExecgateError):
    """The daemon answered with a gRPC error."""

    def __init__(self, message: str, status: grpc.StatusCode, error: str = "",
                 rule: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error
        self.rule = rule


class AuthenticationError(RPCError):
    """No credentials, or credentials the daemon does not accept."""


class PermissionDeniedError(RPCError):
    """The call was refused."""


class PolicyDeniedError(PermissionDeniedError):
    """A policy rule refused the call; ``rule`` names it."""


class ApprovalDeniedError(PermissionDeniedError):
    """The approval the call needed was denied or expired."""


class NotFoundError(RPCError):
    """No such agent or tool (as far as the caller may know)."""


class CommandNotFoundError(NotFoundError):
    """The command is allowed, but not on the daemon's PATH."""


class InvalidArgumentError(RPCError):
    """The request was malformed; the message says how."""


class RateLimitedError(RPCError):
    """The daemon is at a limit; retry later."""

    retry_after: float | None = None
    """Seconds to wait before a retry can succeed, when the daemon knows (a rate limit);
    None for a cap that frees when a run ends."""


class UnavailableError(RPCError):
    """The daemon could not be reached, or could not run the call now."""


class CommandFailedError(ExecgateError):
    """``run(..., check=True)``: the command did not exit by itself with status 0."""

    def __init__(self, result: RunResult | TextRunResult) -> None:
        exit = result.exit
        how = (f"exit status {exit.exit_code}" if exit.reason.name == "EXITED"
               else f"signal {exit.signal}" if exit.reason.name == "SIGNALED"
               else f"{exit.reason.name.lower()}: {exit.message}")
        super().__init__(f"command {list(result.plan.argv)!r} failed ({how})")
        self.result = result
        """The whole result: output and exit."""


class ProtocolError(ExecgateError):
    """The daemon's stream broke the API's contract (e.g. no exit message)."""


_BY_ERROR: dict[str, type[RPCError]] = {
    "policy_denied": PolicyDeniedError,
    "approval_denied": ApprovalDeniedError,
    "approval_expired": ApprovalDeniedError,
    "command_not_found": CommandNotFoundError,
}
_BY_STATUS: dict[grpc.StatusCode, type[RPCError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def from_rpc_error(exc: grpc.RpcError) -> RPCError:
    """The typed error for a gRPC error: the one place statuses become exceptions."""
    call: grpc.Call = exc
    status = call.code()
    trailing = dict(call.trailing_metadata() or ())
    error, rule = str(trailing.get("execgate-error", "")), str(trailing.get("execgate-rule", ""))
    cls = _BY_ERROR.get(error) or _BY_STATUS.get(status, RPCError)
    typed = cls(call.details() or status.name, status, error, rule)
    if isinstance(typed, RateLimitedError):
        typed.retry_after = _seconds(str(trailing.get("execgate-retry-after", "")))
    return typed


def _seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
