"""Tool descriptions and input schemas travel in ListAgents, and the one registry of function
tools is what config, policy and the schema all read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from execgate.client import Client, ToolInfo
from execgate.daemon.config import ConfigError, parse_policy
from execgate.daemon.model import Denial, Plan, ToolCall
from execgate.daemon.policy import Policy
from execgate.daemon.tools import FUNCTION_TOOLS
from tests.conftest import Daemon, start_daemon

POLICY = """\
version: "2"
sandbox: {cgroup: optional}
tools:
  shell:
    type: command
    description: Run build commands.
    max_execution_time: 30s
    allowed_commands: [echo, ls]
  reader:
    type: function
    handler: read_file
    description: Read project files.
  read_file: {type: function}
  write_file: {type: function}
  list_directory: {type: function}
  grep_search: {type: function}
agents:
  dev: {tools: [shell, reader, read_file, write_file, list_directory, grep_search]}
"""


@pytest.fixture(scope="module")
def described(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose tools have descriptions, without authentication."""
    d = start_daemon(tmp_path_factory.mktemp("described"), POLICY)
    yield d
    d.stop()


def tools_of(daemon: Daemon) -> dict[str, ToolInfo]:
    with Client(daemon.target, token="") as c:
        return {t.name: t for t in c.agents()[0].tools}


def test_a_tools_policy_description_is_in_list_agents(described: Daemon) -> None:
    assert tools_of(described)["reader"].description.startswith("Read project files.")


def test_a_command_tools_description_states_its_allowlist(described: Daemon) -> None:
    assert "Allowed commands: echo, ls." in tools_of(described)["shell"].description


def test_a_command_tools_schema_takes_argv_cwd_timeout_env_and_stdin(described: Daemon) -> None:
    schema = tools_of(described)["shell"].input_schema
    assert schema["required"] == ["argv"]
    assert set(schema["properties"]) == {"argv", "cwd", "timeout", "env", "stdin"}
    assert schema["properties"]["argv"]["items"] == {"type": "string"}
    assert schema["properties"]["timeout"]["maximum"] == 30


def test_a_function_tools_schema_is_its_handlers(described: Daemon) -> None:
    """A tool named otherwise gets its handler's arguments."""
    schema = tools_of(described)["reader"].input_schema
    assert schema == FUNCTION_TOOLS["read_file"].input_schema()
    assert schema["required"] == ["path"]
    assert schema["properties"]["offset"] == {
        "type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0,
        "description": "First byte to read."}


def test_every_schema_in_list_agents_is_valid_json_schema(described: Daemon) -> None:
    for tool in tools_of(described).values():
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)


def test_every_handler_in_the_registry_is_one_the_config_accepts(tmp_path: Path) -> None:
    tools = "".join(f"  t{i}: {{type: function, handler: {h}}}\n"
                    for i, h in enumerate(FUNCTION_TOOLS))
    parse_policy(f"tools:\n{tools}", "test", {})


def test_a_handler_outside_the_registry_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match="not a built-in function tool"):
        parse_policy("tools:\n  t: {type: function, handler: delete_file}\n", "test", {})


@pytest.mark.parametrize("handler", sorted(FUNCTION_TOOLS))
def test_every_argument_in_the_schema_is_a_prompt_placeholder(handler: str) -> None:
    fields = " ".join("{" + name + "}" for name in FUNCTION_TOOLS[handler].input_schema()[
        "properties"])
    parse_policy(f"tools:\n  t: {{type: function, handler: {handler}, "
                 f"approval_prompt: '{fields} {{file}}'}}\n", "test", {})


def plan(tmp_path: Path, handler: str, arguments: dict[str, str]) -> Plan:
    """The policy's plan for a call of a function tool with ``handler``."""
    (tmp_path / "workspace").mkdir(exist_ok=True)
    config = parse_policy(f"tools:\n  t: {{type: function, handler: {handler}}}\n"
                          "agents: {a: {tools: [t]}}\n", "test", {}).config
    return Policy(config, tmp_path).plan(
        "a", config.agents["a"], ToolCall(agent="a", tool="t", arguments=arguments))


@pytest.mark.parametrize("handler", sorted(FUNCTION_TOOLS))
def test_the_policy_takes_every_argument_of_the_schema(tmp_path: Path, handler: str) -> None:
    """A value of each argument's schema type, written as the wire writes it, passes."""
    examples = {"string": "x", "integer": "0", "boolean": "true"}
    schema = FUNCTION_TOOLS[handler].input_schema()
    arguments = {name: (prop["enum"][0] if "enum" in prop else examples[prop["type"]])
                 for name, prop in schema["properties"].items()}
    arguments["path"] = "."
    assert plan(tmp_path, handler, arguments).tool == "t"


@pytest.mark.parametrize("handler", sorted(FUNCTION_TOOLS))
def test_the_policy_refuses_an_argument_the_schema_lacks(tmp_path: Path, handler: str) -> None:
    required = FUNCTION_TOOLS[handler].input_schema()["required"]
    arguments = {name: "x" for name in required} | {"recursive": "true"}
    with pytest.raises(Denial, match="takes no argument"):
        plan(tmp_path, handler, arguments)
