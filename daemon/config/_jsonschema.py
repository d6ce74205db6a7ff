"""The policy's JSON Schema, for editors: generated from the models that validate policies.

One source: the pydantic models in ``_schema`` (their field docstrings are the descriptions),
so the schema cannot drift from what the daemon accepts. It is looser than the loader only
where YAML and JSON Schema differ (``${VAR}`` may stand for any value, so strings that hold
one are not checked further) and where a check needs the host (jails, users, listeners).
"""

from __future__ import annotations

import json
from typing import Any

from execgate.daemon.config._schema import PolicyConfig

SCHEMA_FILE = "execgate-policy.schema.json"
"""The schema's file name beside the example policies (``policies/``)."""


_FROM_ENVIRONMENT = {
    "type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$",
    "description": "${VAR} or ${VAR:-default}: the value is taken from the environment (and "
                   "checked) when the policy is loaded."}
_ANNOTATIONS = ("title", "description", "default", "examples", "x-execgate-ignored")


def policy_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy file."""
    schema = PolicyConfig.model_json_schema(mode="validation")
    schema["$defs"]["FromEnvironment"] = _FROM_ENVIRONMENT
    _polish(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
            "title": "execgate policy"}


def _polish(node: Any) -> None:
    """Descriptions as one line of plain text; every key that takes no string also takes a
    whole ``${VAR}`` (the loader expands it before validating)."""
    if isinstance(node, list):
        for item in node:
            _polish(item)
    if not isinstance(node, dict):
        return
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].replace("``", "`").split())
    for key, value in node.items():
        _polish(value)
        if key == "properties":
            for name, prop in value.items():
                value[name] = _or_from_environment(prop)


def _takes_any_string(schema: dict[str, Any]) -> bool:
    if not schema or (schema.get("type") == "string" and "pattern" not in schema):
        return True
    return any(_takes_any_string(s) for s in schema.get("anyOf", []))


def _or_from_environment(prop: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in prop.items() if k not in _ANNOTATIONS}
    if _takes_any_string(rest):
        return prop
    choices = rest["anyOf"] if list(rest) == ["anyOf"] else [rest]
    return {**{k: v for k, v in prop.items() if k in _ANNOTATIONS},
            "anyOf": [*choices, {"$ref": "#/$defs/FromEnvironment"}]}


def policy_schema_text() -> str:
    """The schema as committed: indented JSON with a final newline."""
    return json.dumps(policy_schema(), indent=2) + "\n"
