"""Loading a policy file: YAML, ``.env``, ``${VAR}`` expansion, validation, warnings.

Every problem is reported with its key path, all at once, so that ``check-config`` can list
them. What YAML itself must refuse is ``_yaml``'s concern.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from execgate.daemon.config._schema import PolicyConfig, policy_version
from execgate.daemon.config._yaml import read_yaml

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Sections an LLM platform reads and this daemon does not: variables inside them may stay
# undefined, and each one present earns one warning. ``*`` matches any name.
_IGNORED = (("llms",), ("agents", "*", "llm"), ("agents", "*", "instruction"),
            ("agents", "*", "document_stores"), ("server", "cors"))

PLATFORM_TOOLS = frozenset({"search", "web_request"})
"""The guide's tools an LLM platform provides: an agent may name them without a definition."""


class ConfigError(Exception):
    """A policy that cannot be used; ``problems`` lists each with its key path.

    ``config`` is the policy as validated when its problems leave it whole (an undefined
    tool, a version, a variable not set), so that the host's checks can still run and every
    problem be listed at once; None when the file did not validate."""

    def __init__(self, source: str, problems: list[str],
                 config: PolicyConfig | None = None) -> None:
        self.source = source
        self.problems = problems
        self.config = config
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy and what the loader has to say about it."""

    config: PolicyConfig
    source: str
    warnings: list[str] = field(default_factory=list)


def _ignored(path: tuple[str | int, ...]) -> bool:
    return any(len(path) >= len(p) and all(a in ("*", b) for a, b in zip(p, path, strict=False))
               for p in _IGNORED)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _expand(node: Any, env: Mapping[str, str], path: tuple[str | int, ...],
            problems: list[str]) -> Any:
    """Expand ``${VAR}``/``${VAR:-default}`` in string values; ``$$`` is a literal ``$``."""
    if _ignored(path):
        return node
    if isinstance(node, dict):
        return {k: _expand(v, env, (*path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, (*path, i), problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{_dotted(path)}: environment variable {name} is not set "
                        f"(set it, or write ${{{name}:-default}})")
        return ""

    return _VAR.sub(substitute, node)


def expansion_env(config_path: Path | None, cwd: Path) -> dict[str, str]:
    """The daemon's environment over ``.env`` files beside the config and in ``cwd``.

    A variable already set is never overridden by a ``.env`` file.
    """
    merged: dict[str, str] = {}
    dirs = [cwd] + ([config_path.resolve().parent] if config_path else [])
    for d in dirs:  # the config's own .env wins over the working directory's
        dotenv = d / ".env"
        if dotenv.is_file():
            merged.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    merged.update(os.environ)
    return merged


def _warnings(raw: dict[str, Any], config: PolicyConfig) -> list[str]:
    out = []
    if raw.get("llms") is not None:
        out.append("llms: LLM settings mean nothing to execgated and are ignored")
    if config.server.cors is not None:
        out.append("server.cors: execgated speaks gRPC, not HTTP; cors is ignored")
    for name, agent in config.agents.items():
        for key in ("llm", "instruction", "document_stores"):
            if getattr(agent, key) is not None:
                out.append(f"agents.{name}.{key}: meaningful only to an LLM platform; ignored")
        for i, tool_name in enumerate(agent.tools):
            if tool_name in PLATFORM_TOOLS and tool_name not in config.tools:
                out.append(f"agents.{name}.tools[{i}]: tool {tool_name!r} is not provided by "
                           f"this daemon (an LLM platform's); {name} will not have it here")
    if config.server.allow_remote_plaintext:
        out.append("server.allow_remote_plaintext: calls and credentials may cross the network "
                   "unencrypted")
    for name, tool in config.tools.items():
        if tool.type == "command" and not tool.deny_by_default:
            out.append(f"tools.{name}.deny_by_default: false runs every command not denied; "
                       "a denylist is never complete, prefer allowed_commands")
    return out


def _undefined_tools(config: PolicyConfig) -> list[str]:
    """An agent's tool that no section defines is a typo until shown otherwise: the agent
    would silently lack it."""
    return [f"agents.{name}.tools[{i}]: no tool named {tool!r} is defined under tools"
            for name, agent in config.agents.items() for i, tool in enumerate(agent.tools)
            if tool not in config.tools and tool not in PLATFORM_TOOLS]


_BRANCH = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|function-\w+\[.*\])$")


def _validation_problems(err: ValidationError) -> list[str]:
    problems = []
    errors = err.errors()
    paths = [tuple(p for p in e["loc"] if not _BRANCH.match(str(p))) for e in errors]
    for e, path in zip(errors, paths, strict=True):
        # A value that may be one of several types fails once per type; keep the telling one.
        if paths.count(path) > 1 and e["type"] in ("string_type", "model_type", "dict_type"):
            continue
        loc = _dotted(path)
        if e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key")
        else:
            message = e["msg"].removeprefix("Value error, ")
            if isinstance(e.get("input"), bool) and e["type"].startswith("string"):
                message += (" (YAML reads unquoted yes/no/true/false/on/off as booleans: "
                            "quote it)")
            elif isinstance(e.get("input"), dict) and e["type"].startswith("string"):
                message += (" (YAML reads {name} as a mapping: quote the value, or write "
                            "${NAME} to take it from the environment)")
            problems.append(message if loc == "(top level)" else f"{loc}: {message}")
    return problems


def parse_policy(text: str, source: str, env: Mapping[str, str]) -> LoadedPolicy:
    """Validate a policy given as YAML text; raises ConfigError listing every problem."""
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping of keys"])
    problems: list[str] = []
    expanded = _expand(raw, env, (), problems)
    # The version is the file's header, checked apart so that the rest is still validated.
    try:
        policy_version(expanded.pop("version", "2"))
    except ValueError as exc:
        problems.append(f"version: {exc}")
    try:
        config = PolicyConfig.model_validate(expanded)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc))
        raise ConfigError(source, problems) from None
    problems.extend(_undefined_tools(config))
    if problems:
        raise ConfigError(source, problems, config)
    return LoadedPolicy(config=config, source=source, warnings=_warnings(raw, config))


def load_policy(path: Path, cwd: Path | None = None) -> LoadedPolicy:
    """Read, expand and validate a policy file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    env = expansion_env(path, cwd or Path.cwd())
    return parse_policy(text, str(path), env)


def unenforced(config: PolicyConfig) -> list[str]:
    """Settings this release parses but does not act on; none of them is a protection (every
    security setting of the guide is enforced), so they are reported, not refused."""
    out = []
    auth = config.server.auth
    if auth.enabled and auth.excluded_paths and not auth.require_auth:
        out.append("server.auth.excluded_paths: has no effect when require_auth is false")
    if config.server.observability.metrics.enabled:
        out.append("server.observability.metrics: metrics are not provided yet")
    if config.server.observability.tracing.enabled:
        out.append("server.observability.tracing: tracing is not provided yet")
    return out


