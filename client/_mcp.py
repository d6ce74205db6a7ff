"""``execgate mcp``: an agent's tools as a stdio MCP server (the ``execgate[mcp]`` extra).

Each MCP tool is one execgate tool, with the description and input schema ListAgents gives.
A call is forwarded to the daemon with this process's credential, so the daemon's policy,
approvals and audit apply as to any other caller. Output streams as progress notifications
(a chunk of output is the message); the result carries stdout, stderr, exit code and reason
as JSON text and as structured content. A refusal is a tool error the model can read.

An approval the policy asks for becomes an elicitation where the host supports it: within
the call on a handshake-era connection; on a 2026 connection, which has no requests from
server to client, as an ``input_required`` result whose answer resumes the waiting call.
Without elicitation it is denied, or left to an approver (``--without-elicitation wait``).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

try:
    import mcp_types as types
    from mcp.server.context import ServerRequestContext
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server
    from mcp.shared.exceptions import MCPError
except ImportError:  # the optional extra
    raise ImportError("execgate mcp needs the mcp SDK: pip install 'execgate[mcp]'") from None

from execgate.client._client import AsyncClient
from execgate.client._exceptions import ExecgateError
from execgate.client._models import (
    ApprovalDecision,
    ApprovalRequested,
    Event,
    OutputChunk,
    TLSConfig,
)
from execgate.client.tools._calls import (
    REFUSALS,
    BadArguments,
    Fold,
    ToolOutcome,
    events_async,
    refusal,
    request,
)

WithoutElicitation = Literal["deny", "wait"]
_APPROVAL_SCHEMA = {"type": "object", "required": ["approve"], "properties": {
    "approve": {"type": "boolean", "title": "Approve",
                "description": "Run exactly this call in execgate's sandbox"}}}


@dataclass
class _Call:
    """One tool call on the daemon, running on its own so that it can outlive an MCP request
    while a human answers (a 2026 connection answers in a second request)."""

    events: asyncio.Queue[Event | ToolOutcome | BaseException] = field(
        default_factory=asyncio.Queue)
    answer: asyncio.Future[bool | ApprovalDecision | None] | None = None
    task: asyncio.Task[None] | None = None

    async def on_approval(self, asked: ApprovalRequested) -> bool | ApprovalDecision | None:
        self.answer = asyncio.get_running_loop().create_future()
        await self.events.put(asked)
        return await self.answer

    def decide(self, answer: bool | ApprovalDecision | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(answer)


class Gateway:
    """The MCP server's handlers: tools from ListAgents, calls forwarded to the daemon."""

    def __init__(self, client: AsyncClient, agent: str,
                 without_elicitation: WithoutElicitation) -> None:
        self._client = client
        self._agent = agent
        self._without = without_elicitation
        self._waiting: dict[str, _Call] = {}
        """Calls waiting for an answer that a retried request brings, by request_state."""

    async def list_tools(self, ctx: ServerRequestContext[Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        """The agent's tools, described and with their input schemas."""
        try:
            agents = await self._client.agents()
        except ExecgateError as exc:
            raise MCPError(types.INTERNAL_ERROR, f"execgate: {exc}") from None
        chosen = [a for a in agents if a.name == self._agent or
                  (not self._agent and len(agents) == 1)]
        if not chosen:
            raise MCPError(types.INVALID_PARAMS, f"execgate: no agent {self._agent!r} among "
                           f"{', '.join(a.name for a in agents) or '(none)'}")
        return types.ListToolsResult(tools=[
            types.Tool(name=t.name, description=t.description,
                       input_schema=dict(t.input_schema) or {"type": "object"})
            for t in chosen[0].tools])

    async def call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams,
                        ) -> types.CallToolResult | types.InputRequiredResult:
        """Run the call (or resume one an elicitation answer was asked for)."""
        if params.request_state is not None:
            call = self._waiting.pop(params.request_state, None)
            if call is None:
                return _result(ToolOutcome("", "", None, "approval_expired",
                                           "no call waits for this answer any more"))
            call.decide(_decision((params.input_responses or {}).get("approval")))
        else:
            try:
                req = request(params.arguments or {})
            except BadArguments as bad:
                return _result(refusal(bad))
            call = _Call()
            call.task = asyncio.create_task(self._run(call, params.name, req))
        return await self._follow(ctx, call)

    async def _run(self, call: _Call, tool: str, req: Any) -> None:
        fold = Fold()
        try:
            async for event in events_async(self._client, self._agent, tool, req,
                                            call.on_approval):
                fold.add(event)
                if not isinstance(event, ApprovalRequested):  # on_approval has put it already
                    await call.events.put(event)
            await call.events.put(fold.outcome())
        except REFUSALS as refused:
            await call.events.put(refusal(refused))
        except ExecgateError as exc:
            await call.events.put(exc)
        finally:  # nobody will answer a call that ended while it waited
            for state in [s for s, c in self._waiting.items() if c is call]:
                del self._waiting[state]

    async def _follow(self, ctx: ServerRequestContext[Any], call: _Call,
                      ) -> types.CallToolResult | types.InputRequiredResult:
        sent = 0
        try:
            while True:
                item = await call.events.get()
                if isinstance(item, ToolOutcome):
                    return _result(item)
                if isinstance(item, BaseException):
                    raise MCPError(types.INTERNAL_ERROR, f"execgate: {item}")
                if isinstance(item, OutputChunk):
                    sent += len(item.data)
                    await ctx.session.report_progress(
                        sent, None, item.data.decode(errors="replace"))
                elif isinstance(item, ApprovalRequested):
                    asked = await self._ask(ctx, call, item)
                    if asked is not None:
                        return asked
        except BaseException:
            if call.task is not None and not any(c is call for c in self._waiting.values()):
                call.task.cancel()  # the host gave up on the call: the daemon stops the run
            raise

    async def _ask(self, ctx: ServerRequestContext[Any], call: _Call, asked: ApprovalRequested,
                   ) -> types.InputRequiredResult | None:
        """Put the approval to the user of the host, or answer it as configured."""
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.elicitation is None:
            call.decide(None if self._without == "wait" else ApprovalDecision(
                False, "the MCP host cannot ask its user (no elicitation)"))
            return None
        message = _question(asked)
        if ctx.session.can_send_request:  # a handshake-era connection: ask within the call
            try:
                answer = await ctx.session.elicit_form(message, _APPROVAL_SCHEMA, ctx.request_id)
            except MCPError:
                answer = types.ElicitResult(action="cancel")
            call.decide(_decision(answer))
            return None
        state = secrets.token_urlsafe(24)
        self._waiting[state] = call
        return types.InputRequiredResult(request_state=state, input_requests={
            "approval": types.ElicitRequest(params=types.ElicitRequestFormParams(
                message=message, requested_schema=_APPROVAL_SCHEMA))})


def _question(asked: ApprovalRequested) -> str:
    plan = asked.plan
    return (f"{asked.prompt}\n  runs: {plan.executable} {' '.join(plan.argv[1:])}\n"
            f"  in:   {plan.cwd}")


def _decision(answer: Any) -> ApprovalDecision:
    """The user's answer to the elicitation: only an explicit approve approves."""
    if (isinstance(answer, types.ElicitResult) and answer.action == "accept"
            and (answer.content or {}).get("approve") is True):
        return ApprovalDecision(True)
    return ApprovalDecision(False, "declined in the MCP host")


def _result(outcome: ToolOutcome) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=outcome.to_json())],
                                structured_content=outcome.as_dict(), is_error=outcome.is_error)


async def serve(target: str | None, token: str | None, tls: TLSConfig | None, agent: str,
                without_elicitation: WithoutElicitation) -> None:
    """Serve MCP on stdin/stdout until the host closes it."""
    async with AsyncClient(target, token=token, tls=tls) as client:  # on this event loop
        gateway = Gateway(client, agent, without_elicitation)
        server: Server[Any] = Server("execgate", on_list_tools=gateway.list_tools,
                                     on_call_tool=gateway.call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
