"""AgentService: discovery, filtered by visibility for the caller, with each tool described
and its input given as a JSON Schema, so that a tool can be handed to a model as it is."""

from __future__ import annotations

import json
from typing import Any

import grpc

from execgate.daemon.audit import Audit
from execgate.daemon.auth import current_principal
from execgate.daemon.config import AgentConfig, PolicyConfig, ToolConfig
from execgate.daemon.snapshot import Current
from execgate.daemon.tools import FUNCTION_TOOLS
from execgate.v1 import agents_pb2, agents_pb2_grpc

_VISIBILITY = {"public": agents_pb2.VISIBILITY_PUBLIC, "internal": agents_pb2.VISIBILITY_INTERNAL,
               "private": agents_pb2.VISIBILITY_PRIVATE}


class AgentService(agents_pb2_grpc.AgentServiceServicer):
    """Lists the agents the caller may see."""

    def __init__(self, current: Current, audit: Audit) -> None:
        self._current = current
        self._audit = audit

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext,
    ) -> agents_pb2.ListAgentsResponse:
        snapshot = self._current.get()
        principal = current_principal.get()
        visible = snapshot.access.visible(principal)
        self._audit.discovered(principal, [name for name, _ in visible])
        return agents_pb2.ListAgentsResponse(
            agents=[agent_message(name, agent, snapshot.config) for name, agent in visible])


def agent_message(name: str, config: AgentConfig, policy: PolicyConfig) -> agents_pb2.Agent:
    """An agent as discovery shows it: only the tools this daemon provides."""
    message = agents_pb2.Agent(name=name, visibility=_VISIBILITY[config.visibility])
    for tool_name in config.tools:
        tool = policy.tools.get(tool_name)
        if tool is None:
            continue
        command = tool.type == "command"
        message.tools.append(agents_pb2.Tool(
            name=tool_name,
            type=agents_pb2.TOOL_TYPE_COMMAND if command else agents_pb2.TOOL_TYPE_FUNCTION,
            handler="" if command else (tool.handler or tool_name),
            require_approval=tool.require_approval,
            allowed_commands=tool.allowed_commands, deny_by_default=tool.deny_by_default,
            description=description(tool_name, tool),
            input_schema=json.dumps(input_schema(tool_name, tool), sort_keys=True)))
    return message


def description(tool_name: str, tool: ToolConfig) -> str:
    """The policy's description, then what a model needs to call the tool well."""
    parts = [tool.description.strip()] if tool.description.strip() else []
    if tool.type == "command":
        parts.append("Runs one command as argv (no shell: no pipes, globs or variables), "
                     "confined to the tool's working directory, without network.")
        if tool.allowed_commands and tool.deny_by_default:
            parts.append(f"Allowed commands: {', '.join(tool.allowed_commands)}.")
        elif tool.denied_commands:
            parts.append(f"Any command but: {', '.join(tool.denied_commands)}.")
        if tool.require_approval_for:
            parts.append("A human approves calls starting with: "
                         f"{'; '.join(tool.require_approval_for)}.")
    else:
        parts.append(FUNCTION_TOOLS[tool.handler or tool_name].description)
    if tool.require_approval:
        parts.append("A human approves each call.")
    return " ".join(parts)


def input_schema(tool_name: str, tool: ToolConfig) -> dict[str, Any]:
    """The JSON Schema of the tool's input."""
    if tool.type == "function":
        return FUNCTION_TOOLS[tool.handler or tool_name].input_schema()
    return {
        "type": "object",
        "properties": {
            "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                     "description": "The command and its arguments; argv[0] is a bare "
                                    "command name."},
            "cwd": {"type": "string", "description": "Directory to run in, relative to the "
                                                     "tool's working directory."},
            "timeout": {"type": "number", "exclusiveMinimum": 0,
                        "maximum": tool.max_execution_time,
                        "description": "Seconds before the command is stopped (default and "
                                       "most: the tool's maximum)."},
            "env": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Extra environment variables."},
            "stdin": {"type": "string", "description": "Text written to the command's "
                                                       "standard input."},
        },
        "required": ["argv"],
        "additionalProperties": False,
    }
