"""The config loader: whatever it is given, a policy or a ConfigError with key paths."""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from execgate.daemon.config import ConfigError, parse_policy

_KEYS = ["version", "tools", "agents", "server", "logger", "sandbox", "approvals", "type",
         "allowed_commands", "denied_commands", "max_execution_time", "max_output_bytes",
         "visibility", "working_directory", "auth", "api_keys", "rate_limit", "env", "key",
         "name", "listen", "port", "tls", "enabled", "level", "cgroup", "x", "<<", ""]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                     st.text(max_size=20),
                     st.sampled_from(["${X}", "${UNSET}", "${X:-1s}", "$$", "${", "30s",
                                      "16MiB", "command", "function", "public", "2", "*"]))
_NODES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=5)),
    max_leaves=25)
_ENV = {"X": "value"}
_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
_COMMAND = st.from_regex(r"[a-z][a-z0-9._-]{0,11}", fullmatch=True)


def _loads(text: str) -> ConfigError | None:
    try:
        parse_policy(text, "policy.yaml", _ENV)
    except ConfigError as error:
        return error
    return None


def _placed(error: ConfigError) -> None:
    """Every problem names where it is, and reports without failing."""
    assert error.problems
    for line in error.report():
        assert line.startswith("policy.yaml"), line


@given(st.text(max_size=300))
def test_any_text_loads_or_is_a_config_error(text: str) -> None:
    error = _loads(text)
    if error is not None:
        _placed(error)


@given(st.dictionaries(st.sampled_from(_KEYS), _NODES, max_size=6))
def test_any_yaml_structure_loads_or_is_a_config_error_with_key_paths(raw: dict[str, Any]
                                                                      ) -> None:
    error = _loads(yaml.safe_dump(raw))
    if error is not None:
        _placed(error)
        for problem in error.problems:
            assert re.match(r"[^\s:]*[:\s]", problem), problem


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid policy, written the way authors write one (units, lists, defaults left out)."""
    tools: dict[str, Any] = {}
    for name in draw(st.lists(_NAME, min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()):
            tools[name] = {"type": "function", "handler": draw(st.sampled_from(
                ["read_file", "write_file", "list_directory", "grep_search"]))}
            continue
        allowed = draw(st.lists(_COMMAND, max_size=5, unique=True))
        tools[name] = {
            "type": "command",
            "allowed_commands": allowed,
            "denied_commands": [c for c in draw(st.lists(_COMMAND, max_size=3, unique=True))
                                if c not in allowed],
            # allowed_commands without deny_by_default is refused as meaningless.
            "deny_by_default": bool(allowed) or draw(st.booleans()),
            "max_execution_time": f"{draw(st.integers(1, 3600))}s",
            "max_output_bytes": draw(st.sampled_from(["64KiB", "1MiB", "16MiB", 65536])),
            "kill_grace": draw(st.sampled_from(["500ms", "1s", "5s"])),
            "require_approval": draw(st.booleans()),
            "env": draw(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9]{0,7}", fullmatch=True)
                                        .filter(lambda n: not n.startswith(
                                            ("LD", "PYTHON", "GIT", "PERL", "RUBY", "XDG"))),
                                        st.text(st.characters(categories=["L", "N"]),
                                                max_size=10), max_size=2)),
        }
    agents = {name: {"visibility": draw(st.sampled_from(["public", "internal", "private"])),
                     "tools": draw(st.lists(st.sampled_from(sorted(tools)), unique=True))}
              for name in draw(st.lists(_NAME, min_size=1, max_size=3, unique=True))}
    return {"version": "2", "sandbox": {"cgroup": "optional"}, "tools": tools,
            "agents": agents}


@given(policies())
def test_a_valid_policy_round_trips_through_its_dump(policy: dict[str, Any]) -> None:
    """What the daemon makes of a policy, written out and loaded again, is the same policy."""
    first = parse_policy(yaml.safe_dump(policy), "policy.yaml", {}).config
    again = parse_policy(yaml.safe_dump(first.model_dump(mode="json", by_alias=True,
                                                         exclude_unset=True)),
                         "dump.yaml", {}).config
    assert again == first


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
       st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
       st.text(st.characters(categories=["L", "N"]), max_size=10))
def test_variables_expand_to_their_value_or_their_default(name: str, value: str,
                                                          default: str) -> None:
    template = f"a ${{{name}}} b ${{{name}:-x}} c ${{UNSET_{name}:-{default}}} d $${{{name}}}"
    policy = {"tools": {"t": {"type": "command", "description": template}},
              "agents": {"a": {"tools": ["t"]}}, "sandbox": {"cgroup": "optional"}}
    loaded = parse_policy(yaml.safe_dump(policy), "policy.yaml", {name: value})
    assert loaded.config.tools["t"].description == (
        f"a {value} b {value} c {default} d ${{{name}}}")


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True))
def test_an_unset_variable_is_a_config_error_naming_its_key(name: str) -> None:
    policy = {"tools": {"t": {"type": "command", "description": f"${{{name}}}"}},
              "agents": {"a": {"tools": ["t"]}}, "sandbox": {"cgroup": "optional"}}
    error = _loads(yaml.safe_dump(policy)) if name != "X" else None
    if name == "X":
        return
    assert error is not None
    assert any(p.startswith("tools.t.description: environment variable " + name)
               for p in error.problems)
