"""execgate's Python client: run tool calls on an execgated daemon.

Needs only grpcio and protobuf.
"""

from execgate.client._client import AsyncClient, Client
from execgate.client._exceptions import (
    ApprovalDeniedError,
    AuthenticationError,
    CommandNotFoundError,
    ExecgateError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PolicyDeniedError,
    ProtocolError,
    RateLimitedError,
    RPCError,
    UnavailableError,
)
from execgate.client._models import (
    AgentInfo,
    ApprovalDecision,
    ApprovalRequested,
    ApprovalResolved,
    Event,
    Exited,
    ExitReason,
    OutputChunk,
    Plan,
    RunResult,
    Sandbox,
    Started,
    TLSConfig,
    ToolInfo,
)

__all__ = [
    "AgentInfo",
    "ApprovalDecision",
    "ApprovalDeniedError",
    "ApprovalRequested",
    "ApprovalResolved",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "CommandNotFoundError",
    "Event",
    "ExecgateError",
    "ExitReason",
    "Exited",
    "InvalidArgumentError",
    "NotFoundError",
    "OutputChunk",
    "PermissionDeniedError",
    "Plan",
    "PolicyDeniedError",
    "ProtocolError",
    "RPCError",
    "RateLimitedError",
    "RunResult",
    "Sandbox",
    "Started",
    "TLSConfig",
    "ToolInfo",
    "UnavailableError",
]
