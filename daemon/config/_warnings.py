"""What the loader warns about: settings that load but may not do what the author thinks.

``check-config --strict`` counts each of these as an error, for pipelines that lint policies.
"""

from __future__ import annotations

import re
from typing import Any

from execgate.daemon.config._marks import dotted
from execgate.daemon.config._schema import PolicyConfig

PLATFORM_TOOLS = frozenset({"search", "web_request"})
"""The guide's tools an LLM platform provides: an agent may name them without a definition."""

_SECRET_KEYS = frozenset({"api_key", "password", "secret", "client_secret", "token"})
"""Keys whose value is a credential wherever they appear (``llms.*.api_key`` too)."""
_FROM_ENVIRONMENT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-)?\}")
"""``${VAR}`` (or ``${VAR:-}``): a default after ``:-`` would be the secret, written out."""
_BOUNDS = ("cpu_time", "memory", "processes")
"""Limits without which one runaway command can take the host's CPU, memory or pid space."""


def warnings(raw: dict[str, Any], config: PolicyConfig) -> list[str]:
    """Each warning, beginning with the key path it is about."""
    return [*_ignored(raw, config), *_literal_secrets(raw, ()), *_open_tools(config)]


def _ignored(raw: dict[str, Any], config: PolicyConfig) -> list[str]:
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
    return out


def _literal_secrets(node: Any, path: tuple[str | int, ...]) -> list[str]:
    """Credentials written into the file (which is read by auditors and committed), rather
    than taken from the environment or stored as a digest."""
    if isinstance(node, dict):
        return [w for k, v in node.items() for w in _literal_secrets(v, (*path, str(k)))]
    if isinstance(node, list):
        return [w for i, v in enumerate(node) for w in _literal_secrets(v, (*path, i))]
    is_secret = bool(path) and (
        path[-1] in _SECRET_KEYS or path[-2:-1] == ("api_keys",)  # - ${KEY}
        or (path[-3:-2] == ("api_keys",) and path[-1] == "key"))  # - {name: n, key: ...}
    if (is_secret and isinstance(node, str | int) and not isinstance(node, bool)
            and not _FROM_ENVIRONMENT.fullmatch(str(node))):
        return [f"{dotted(path)}: a secret written in the file; write ${{VAR}} to take it "
                "from the environment (an API key may be stored as its sha256, see "
                "execgated hash-key)"]
    return []


def _open_tools(config: PolicyConfig) -> list[str]:
    out = []
    for name, tool in config.tools.items():
        if tool.type != "command":
            continue
        if not tool.deny_by_default:
            out.append(f"tools.{name}.deny_by_default: false runs every command not denied; "
                       "a denylist is never complete, prefer allowed_commands")
        limits = config.sandbox_for(name).limits
        if off := [bound for bound in _BOUNDS if getattr(limits, bound) is None]:
            out.append(f"tools.{name}: runs with no {', '.join(off)} limit (null in "
                       "sandbox.limits): one runaway command can exhaust the host")
    return out
