"""The policy's JSON Schema: generated from the models, committed fresh, and agreeing with
the loader on the repository's policies, the README's examples and the usual typos."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from execgate.daemon.config import (
    DEFAULT_POLICY,
    SCHEMA_FILE,
    ConfigError,
    parse_policy,
    policy_schema,
    policy_schema_text,
)
from tests.conftest import TEST_POLICY

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))
README_EXAMPLES = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
VALIDATOR = jsonschema.Draft202012Validator(policy_schema())

# (what is wrong, the policy) -- each refused by the schema and by the loader alike
TYPOS = [
    ("a misspelt tool key", "tools:\n  sh:\n    type: command\n    allowed_comands: [ls]\n"),
    ("a misspelt section", "servr:\n  port: 7878\n"),
    ("a misspelt agent key", "agents:\n  a:\n    visiblity: public\n"),
    ("a duration with a space", "tools:\n  sh:\n    type: command\n"
     "    max_execution_time: 30 sec\n"),
    ("a size that is no size", "tools:\n  sh:\n    type: command\n    max_output_bytes: lots\n"),
    ("an unknown tool type", "tools:\n  sh:\n    type: shell\n"),
    ("an unknown visibility", "agents:\n  a:\n    visibility: secret\n"),
    ("an unquoted yes as a description", "tools:\n  sh:\n    type: command\n"
     "    description: yes\n"),
    ("a layer mode that does not exist", "sandbox:\n  filesystem: maybe\n"),
    ("version 1", 'version: "1"\n'),
]


def errors(document: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in VALIDATOR.iter_errors(document)]


def test_the_committed_schema_is_the_one_the_models_generate() -> None:
    """CI checks this too (scripts/gen-schema --check): an editor must not be told stale keys."""
    assert (ROOT / "policies" / SCHEMA_FILE).read_text() == policy_schema_text()


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_schema())


def test_every_key_has_a_description() -> None:
    missing = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if not prop.get("description"):
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(policy_schema(), "")
    assert missing == []


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_every_policy_file_in_the_repository_validates(path: Path) -> None:
    assert errors(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_every_policy_file_names_the_schema_for_editors(path: Path) -> None:
    assert path.read_text().splitlines()[0] == f"# yaml-language-server: $schema={SCHEMA_FILE}"


@pytest.mark.parametrize("text", [DEFAULT_POLICY, TEST_POLICY], ids=["embedded", "tests"])
def test_the_embedded_and_test_policies_validate(text: str) -> None:
    """Their ${VAR} values stand for booleans and layer modes: the schema takes them."""
    assert errors(yaml.safe_load(text)) == []


@pytest.mark.parametrize("text", README_EXAMPLES,
                         ids=[f"readme-{i}" for i in range(len(README_EXAMPLES))])
def test_the_readmes_examples_validate(text: str) -> None:
    assert errors(yaml.safe_load(text)) == []


@pytest.mark.parametrize("text", [t for _, t in TYPOS], ids=[w for w, _ in TYPOS])
def test_the_schema_refuses_what_the_loader_refuses(text: str) -> None:
    assert errors(yaml.safe_load(text)) != []
    with pytest.raises(ConfigError):
        parse_policy(text, "t.yaml", {})


def test_durations_and_sizes_are_shown_as_users_write_them() -> None:
    tool = policy_schema()["$defs"]["ToolConfig"]["properties"]
    assert "30s" in json.dumps(tool["max_execution_time"])
    assert "16MiB" in json.dumps(tool["max_output_bytes"])
    assert errors({"tools": {"t": {"type": "command", "max_execution_time": "1m30s",
                                   "max_output_bytes": "64MiB"}}}) == []


@pytest.mark.parametrize("path", [("llms",), ("$defs", "AgentConfig", "properties", "llm"),
                                  ("$defs", "AgentConfig", "properties", "instruction"),
                                  ("$defs", "AgentConfig", "properties", "document_stores"),
                                  ("$defs", "ServerConfig", "properties", "cors")])
def test_the_llm_platform_keys_are_marked_accepted_and_ignored(path: tuple[str, ...]) -> None:
    node: Any = policy_schema()
    for key in path if path[0] == "$defs" else ("properties", *path):
        node = node[key]
    assert node["x-execgate-ignored"] is True
    assert node["description"].startswith("Ignored by execgated")
