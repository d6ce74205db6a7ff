"""AgentService: discovery, filtered by visibility for the caller."""

from __future__ import annotations

import grpc

from execgate.daemon.access import Access
from execgate.daemon.auth import current_principal
from execgate.daemon.config import PolicyConfig
from execgate.daemon.services import _convert
from execgate.v1 import agents_pb2, agents_pb2_grpc


class AgentService(agents_pb2_grpc.AgentServiceServicer):
    """Lists the agents the caller may see."""

    def __init__(self, access: Access, policy: PolicyConfig) -> None:
        self._access = access
        self._policy = policy

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext,
    ) -> agents_pb2.ListAgentsResponse:
        visible = self._access.visible(current_principal.get())
        return agents_pb2.ListAgentsResponse(
            agents=[_convert.agent(name, agent, self._policy) for name, agent in visible])
