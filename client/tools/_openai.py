"""OpenAI-shaped tools: definitions for Chat Completions or the Responses API, and
``dispatch``, which runs a model's tool call and returns the message that answers it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from execgate.client._client import Client, OnApproval
from execgate.client._models import ToolInfo
from execgate.client.tools._calls import run_tool


def agent_tools(client: Client, agent: str) -> tuple[ToolInfo, ...]:
    """The tools of ``agent`` (of the only agent the caller sees, when empty)."""
    agents = client.agents()
    if not agent and len(agents) == 1:
        return agents[0].tools
    for info in agents:
        if info.name == agent:
            return info.tools
    raise ValueError(f"no agent {agent!r} among those this caller sees: "
                     f"{', '.join(a.name for a in agents) or '(none)'}")


def openai_tools(client: Client, agent: str = "", *,
                 api: Literal["chat", "responses"] = "chat") -> list[dict[str, Any]]:
    """The agent's tools as OpenAI function tools: ``{"type": "function", "function": {name,
    description, parameters}}`` for Chat Completions, flat for the Responses API."""
    definitions = []
    for tool in agent_tools(client, agent):
        function = {"name": tool.name, "description": tool.description,
                    "parameters": dict(tool.input_schema)}
        definitions.append({"type": "function", "function": function} if api == "chat"
                           else {"type": "function", **function})
    return definitions


def _field(call: Any, name: str) -> Any:
    """A field of a tool call given as a dict or as an SDK object."""
    return call.get(name) if isinstance(call, Mapping) else getattr(call, name, None)


def dispatch(client: Client, tool_call: Any, *, agent: str = "",
             on_approval: OnApproval | None = None) -> dict[str, Any]:
    """Run a model's tool call and return the message that answers it: ``{"role": "tool",
    "tool_call_id", "content"}`` for a Chat Completions call, ``{"type":
    "function_call_output", "call_id", "output"}`` for a Responses API one. The content is
    the ToolOutcome's JSON (stdout, stderr, exit_code, reason, message, rule); a refusal is
    an outcome too, so that the model can read the rule and try something else."""
    function = _field(tool_call, "function")
    if function is not None:  # Chat Completions: {"id", "type", "function": {...}}
        name, arguments = _field(function, "name"), _field(function, "arguments")
    else:  # Responses API: {"type": "function_call", "call_id", "name", "arguments"}
        name, arguments = _field(tool_call, "name"), _field(tool_call, "arguments")
    outcome = run_tool(client, str(name), arguments if arguments is not None else "{}",
                       agent=agent, on_approval=on_approval)
    if function is not None:
        return {"role": "tool", "tool_call_id": _field(tool_call, "id"),
                "content": outcome.to_json()}
    return {"type": "function_call_output", "call_id": _field(tool_call, "call_id"),
            "output": outcome.to_json()}
