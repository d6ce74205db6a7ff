"""The service layer: thin gRPC servicers; the only code that sees gRPC types."""

from execgate.daemon.services._agents import AgentService
from execgate.daemon.services._approvals import ApprovalService
from execgate.daemon.services._exec import ExecService
from execgate.daemon.services._interceptor import AuthInterceptor

__all__ = ["AgentService", "ApprovalService", "AuthInterceptor", "ExecService"]
