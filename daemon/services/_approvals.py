"""ApprovalService: approvers watch pending requests and decide them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from execgate.daemon.approvals import Approvals, Pending
from execgate.daemon.auth import current_principal
from execgate.daemon.model import CommandPlan, Denial
from execgate.daemon.sandbox import Layers, Spawner
from execgate.daemon.services import _convert
from execgate.daemon.services._errors import abort
from execgate.v1 import approvals_pb2, approvals_pb2_grpc


class ApprovalService(approvals_pb2_grpc.ApprovalServiceServicer):
    """Watching and deciding approvals, for those the policy lets decide."""

    def __init__(self, approvals: Approvals, spawner: Spawner) -> None:
        self._approvals = approvals
        self._spawner = spawner

    def _layers(self, pending: Pending) -> Layers | None:
        if not isinstance(pending.plan, CommandPlan):
            return None
        try:
            return self._spawner.layers(pending.plan)
        except Denial:
            return None

    async def WatchApprovals(
        self, request: approvals_pb2.WatchApprovalsRequest, context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[approvals_pb2.WatchApprovalsResponse]:
        async for event in self._approvals.watch(current_principal.get()):
            if isinstance(event, Pending):
                yield approvals_pb2.WatchApprovalsResponse(
                    pending=_convert.approval_request(event, self._layers(event)))
            else:
                yield approvals_pb2.WatchApprovalsResponse(resolved=approvals_pb2.ApprovalResolved(
                    approval_id=event.id, outcome=event.outcome, decider=event.decider))

    async def GetApproval(
        self, request: approvals_pb2.GetApprovalRequest, context: grpc.aio.ServicerContext,
    ) -> approvals_pb2.GetApprovalResponse:
        try:
            pending = self._approvals.find(request.approval_id, current_principal.get())
        except Denial as denial:
            await abort(context, denial)
        return approvals_pb2.GetApprovalResponse(
            approval=_convert.approval_request(pending, self._layers(pending)))

    async def DecideApproval(
        self, request: approvals_pb2.DecideApprovalRequest, context: grpc.aio.ServicerContext,
    ) -> approvals_pb2.DecideApprovalResponse:
        d = request.decision
        try:
            await self._approvals.decide(d.approval_id, d.approve, d.reason, d.plan_digest,
                                   current_principal.get())
        except Denial as denial:
            await abort(context, denial)
        return approvals_pb2.DecideApprovalResponse()
