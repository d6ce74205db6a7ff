"""``execgate mcp`` as an MCP host sees it: the mcp SDK's own client over stdio, against
``execgate mcp`` and a real daemon."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext

from tests.conftest import API_KEY, Daemon, start_daemon, writable_by_commands

README = (Path(__file__).parents[2] / "README.md").read_text()

POLICY = """\
version: "2"
sandbox: {cgroup: optional}
tools:
  shell:
    type: command
    description: Run commands in the project.
    allowed_commands: [sh, echo, touch]
    denied_commands: [rm]
    require_approval_for: [touch]
  read_file: {type: function}
agents:
  dev: {tools: [shell, read_file]}
server:
  auth:
    api_keys: [{name: tester, key: "${TEST_API_KEY}"}]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose shell asks a human before touch."""
    d = start_daemon(tmp_path_factory.mktemp("mcp"), POLICY)
    writable_by_commands(d.workspace)
    yield d
    d.stop()


def host_config(daemon: Daemon) -> dict[str, Any]:
    """The README's MCP host entry, pointed at the test daemon."""
    block = README.split("MCP host configuration:\n\n```json\n", 1)[1].split("```", 1)[0]
    entry: dict[str, Any] = json.loads(block)["mcpServers"]["execgate"]
    entry["args"] = [*entry["args"], "--target", daemon.target]
    entry["env"] = {**os.environ, **entry["env"], "EXECGATE_TOKEN": API_KEY}
    return entry


def execgate_mcp(daemon: Daemon, *extra: str) -> StdioServerParameters:
    """``execgate mcp`` as the README's host entry starts it (with this interpreter)."""
    entry = host_config(daemon)
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "execgate.client._cli", *entry["args"], *extra],
                                 env=entry["env"])


def approver(approve: bool) -> Any:
    """An elicitation callback: the user in the MCP host answers ``approve``."""
    async def answer(context: ClientRequestContext,
                     params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        assert "touch" in params.message
        return types.ElicitResult(action="accept", content={"approve": approve})
    return answer


def test_the_readmes_host_entry_runs_execgate_mcp() -> None:
    entry = json.loads(README.split("MCP host configuration:\n\n```json\n", 1)[1]
                       .split("```", 1)[0])["mcpServers"]["execgate"]
    assert entry["command"] == "execgate"
    assert entry["args"][0] == "mcp"


async def test_lists_the_agents_tools_with_their_schemas(daemon: Daemon) -> None:
    async with Client(execgate_mcp(daemon)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"shell", "read_file"}
    assert "Allowed commands: sh, echo, touch." in (tools["shell"].description or "")
    assert tools["shell"].input_schema["required"] == ["argv"]
    assert tools["read_file"].input_schema["required"] == ["path"]
    jsonschema.Draft202012Validator.check_schema(tools["shell"].input_schema)


async def test_a_command_tool_returns_its_output_and_exit_code(daemon: Daemon) -> None:
    async with Client(execgate_mcp(daemon)) as client:
        result = await client.call_tool(
            "shell", {"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    assert result.structured_content == {"stdout": "out\n", "stderr": "err\n", "exit_code": 3,
                                         "reason": "exited", "message": "", "rule": ""}
    assert result.is_error
    assert isinstance(result.content[0], types.TextContent)
    assert json.loads(result.content[0].text) == result.structured_content


async def test_a_policy_refusal_is_a_tool_error_naming_the_rule(daemon: Daemon) -> None:
    """Not a protocol error: the model reads the rule and the reason."""
    async with Client(execgate_mcp(daemon)) as client:
        result = await client.call_tool("shell", {"argv": ["rm", "-rf", "."]})
    assert result.is_error
    assert result.structured_content["reason"] == "policy_denied"
    assert result.structured_content["rule"] == "tools.shell.denied_commands"
    assert isinstance(result.content[0], types.TextContent)
    assert "tools.shell.denied_commands" in result.content[0].text


async def test_an_elicitation_answered_approve_runs_the_call(daemon: Daemon) -> None:
    async with Client(execgate_mcp(daemon), elicitation_callback=approver(True)) as client:
        result = await client.call_tool("shell", {"argv": ["touch", "approved.txt"]})
    assert not result.is_error
    assert (daemon.workspace / "approved.txt").exists()


async def test_an_elicitation_answered_deny_refuses_the_call(daemon: Daemon) -> None:
    async with Client(execgate_mcp(daemon), elicitation_callback=approver(False)) as client:
        result = await client.call_tool("shell", {"argv": ["touch", "denied.txt"]})
    assert result.is_error
    assert result.structured_content["reason"] == "approval_denied"
    assert not (daemon.workspace / "denied.txt").exists()


async def test_an_elicitation_on_a_handshake_era_connection(daemon: Daemon) -> None:
    """A host on a pre-2026 protocol gets the elicitation as a request within the call."""
    async with Client(execgate_mcp(daemon), mode="legacy",
                      elicitation_callback=approver(True)) as client:
        result = await client.call_tool("shell", {"argv": ["touch", "legacy.txt"]})
    assert not result.is_error
    assert (daemon.workspace / "legacy.txt").exists()


async def test_without_elicitation_an_approval_is_denied_by_default(daemon: Daemon) -> None:
    async with Client(execgate_mcp(daemon)) as client:
        result = await client.call_tool("shell", {"argv": ["touch", "unasked.txt"]})
    assert result.structured_content["reason"] == "approval_denied"
    assert not (daemon.workspace / "unasked.txt").exists()


async def test_a_streaming_command_reports_progress(daemon: Daemon) -> None:
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async with Client(execgate_mcp(daemon)) as client:
        result = await client.call_tool("shell", {"argv": ["sh", "-c", "echo one; echo two"]},
                                        progress_callback=progress)
    assert result.structured_content["stdout"] == "one\ntwo\n"
    assert "".join(seen) == "one\ntwo\n"


async def test_bad_arguments_are_a_tool_error(daemon: Daemon) -> None:
    async with Client(execgate_mcp(daemon)) as client:
        result = await client.call_tool("shell", {"argv": "echo hi"})
    assert result.is_error
    assert result.structured_content["reason"] == "invalid_argument"
