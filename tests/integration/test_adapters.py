"""The Python adapters against a real daemon: OpenAI tool definitions and dispatch, LangChain
tools sync and async, and the README's snippets as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from execgate.client import AsyncClient, Client
from execgate.client.tools import dispatch, langchain_tools, openai_tools
from tests.conftest import API_KEY, Daemon

README = (Path(__file__).parents[2] / "README.md").read_text()


def chat_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    """A Chat Completions tool call, as a model's message carries it."""
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_openai_definitions_validate_as_json_schema(client: Client) -> None:
    tools = openai_tools(client, "dev")
    assert [t["function"]["name"] for t in tools] == [
        "shell", "read_file", "write_file", "list_directory", "grep_search"]
    for tool in tools:
        assert tool["type"] == "function"
        assert tool["function"]["description"]
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])


def test_a_models_arguments_validate_against_the_definitions(client: Client) -> None:
    """What a model is told to send is what dispatch takes."""
    parameters = {t["function"]["name"]: t["function"]["parameters"]
                  for t in openai_tools(client, "dev")}
    jsonschema.validate({"argv": ["echo", "hi"], "timeout": 5}, parameters["shell"])
    jsonschema.validate({"path": "a.txt", "offset": 3}, parameters["read_file"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"path": "a.txt", "mode": "truncate", "content": ""},
                            parameters["write_file"])


def test_responses_api_definitions_are_flat(client: Client) -> None:
    tool = openai_tools(client, "dev", api="responses")[0]
    assert tool["type"] == "function"
    assert tool["name"] == "shell"
    assert tool["parameters"]["required"] == ["argv"]


def test_dispatch_runs_a_command_and_returns_the_tool_message(client: Client) -> None:
    message = dispatch(client, chat_call("shell", {"argv": ["echo", "hi"]}), agent="dev")
    assert message["role"] == "tool"
    assert message["tool_call_id"] == "call_1"
    content = json.loads(message["content"])
    assert content["stdout"] == "hi\n"
    assert content["exit_code"] == 0
    assert content["reason"] == "exited"


def test_dispatch_gives_stdin_to_the_command(client: Client) -> None:
    message = dispatch(client, chat_call("shell", {"argv": ["cat"], "stdin": "piped"}),
                       agent="dev")
    assert json.loads(message["content"])["stdout"] == "piped"


def test_dispatch_turns_json_types_into_the_wire_strings(
        client: Client, daemon: Daemon) -> None:
    (daemon.workspace / "window.txt").write_text("0123456789")
    message = dispatch(client, chat_call("read_file", {"path": "window.txt", "offset": 2,
                                                       "limit": 3}), agent="dev")
    assert json.loads(message["content"])["stdout"] == "234"


def test_dispatch_returns_a_policy_refusal_the_model_can_read(client: Client) -> None:
    message = dispatch(client, chat_call("shell", {"argv": ["rm", "x"]}), agent="dev")
    content = json.loads(message["content"])
    assert content["reason"] == "policy_denied"
    assert content["rule"] == "tools.shell.denied_commands"


def test_dispatch_of_arguments_that_are_not_json_is_a_readable_error(client: Client) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "shell", "arguments": "{argv"}}
    content = json.loads(dispatch(client, call, agent="dev")["content"])
    assert content["reason"] == "invalid_argument"
    assert "JSON" in content["message"]


def test_dispatch_answers_a_responses_api_call_in_kind(client: Client) -> None:
    call = {"type": "function_call", "call_id": "fc_1", "name": "shell",
            "arguments": json.dumps({"argv": ["echo", "r"]})}
    message = dispatch(client, call, agent="dev")
    assert message["type"] == "function_call_output"
    assert message["call_id"] == "fc_1"
    assert json.loads(message["output"])["stdout"] == "r\n"


def test_langchain_tools_carry_name_description_and_schema(client: Client) -> None:
    tools = {t.name: t for t in langchain_tools(client, "dev")}
    assert "Allowed commands:" in tools["shell"].description
    assert tools["read_file"].args_schema == client.agents()[0].tools[1].input_schema


def test_a_langchain_tool_runs_sync(client: Client) -> None:
    shell = langchain_tools(client, "dev")[0]
    assert json.loads(shell.invoke({"argv": ["echo", "sync"]}))["stdout"] == "sync\n"


async def test_a_langchain_tool_runs_async(client: Client, daemon: Daemon) -> None:
    async with AsyncClient(daemon.target, token=API_KEY) as async_client:
        shell = langchain_tools(client, "dev", async_client=async_client)[0]
        result = json.loads(await shell.ainvoke({"argv": ["echo", "async"]}))
    assert result["stdout"] == "async\n"


def readme_snippet(marker: str) -> str:
    return README.split(marker + "\n\n```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_openai_snippet_runs_as_written(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXECGATE_TARGET", daemon.target)
    monkeypatch.setenv("EXECGATE_TOKEN", API_KEY)
    exec(compile(readme_snippet("OpenAI tools:"), "README.md", "exec"), {})
    assert '"stdout": "hi\\n"' in capsys.readouterr().out


def test_the_readmes_langchain_snippet_runs_as_written(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXECGATE_TARGET", daemon.target)
    monkeypatch.setenv("EXECGATE_TOKEN", API_KEY)
    snippet = readme_snippet("LangChain (`pip install 'execgate[langchain]'`):")
    exec(compile(snippet, "README.md", "exec"), {})
    assert '"stdout": "hi\\n"' in capsys.readouterr().out
