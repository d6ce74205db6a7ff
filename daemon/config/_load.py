"""Loading a policy file: YAML, ``.env``, ``${VAR}`` expansion, validation, warnings.

Every problem is reported with its key path, all at once, so that ``check-config`` can list
them; ``KeyMarks`` places each at its line and column, and an unknown key or an undefined tool
comes with the closest known one. What YAML itself must refuse is ``_yaml``'s concern.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from execgate.daemon.config._marks import KeyMarks, Mark, dotted
from execgate.daemon.config._schema import PolicyConfig, policy_version
from execgate.daemon.config._suggest import closest, known_keys
from execgate.daemon.config._warnings import PLATFORM_TOOLS, warnings
from execgate.daemon.config._yaml import read_yaml

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Sections an LLM platform reads and this daemon does not: variables inside them may stay
# undefined, and each one present earns one warning. ``*`` matches any name.
_IGNORED = (("llms",), ("agents", "*", "llm"), ("agents", "*", "instruction"),
            ("agents", "*", "document_stores"), ("server", "cors"))

class ConfigError(Exception):
    """A policy that cannot be used; ``problems`` lists each with its key path, and
    ``report()`` with its file, line and column too, sorted by line.

    ``config`` is the policy as validated when its problems leave it whole (an undefined
    tool, a version, a variable not set), so that the host's checks can still run and every
    problem be listed at once; None when the file did not validate. ``warnings`` are the
    loader's warnings about that policy (``check-config --strict`` counts them as errors)."""

    def __init__(self, source: str, problems: list[str], config: PolicyConfig | None = None,
                 marks: KeyMarks | None = None, warnings: list[str] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.config = config
        self.marks = marks or KeyMarks()
        self.warnings = warnings or []
        super().__init__("\n".join(self.report()))

    def report(self) -> list[str]:
        """Each problem as ``FILE:LINE:COLUMN: key.path: what is wrong``, sorted by line."""
        return self.marks.report(self.source, self.problems)


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy and what the loader has to say about it."""

    config: PolicyConfig
    source: str
    warnings: list[str] = field(default_factory=list)
    marks: KeyMarks = field(default_factory=KeyMarks)
    """Where each key is written, to place problems the host's checks find."""


def _ignored(path: tuple[str | int, ...]) -> bool:
    return any(len(path) >= len(p) and all(a in ("*", b) for a, b in zip(p, path, strict=False))
               for p in _IGNORED)


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
        problems.append(f"{dotted(path)}: environment variable {name} is not set "
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


def _undefined_tools(policy: dict[str, Any]) -> list[str]:
    """An agent's tool that no section defines is a typo until shown otherwise: the agent
    would silently lack it. Read from the file's own data, so that it is found even when
    another section does not validate."""
    tools, agents = policy.get("tools"), policy.get("agents")
    defined = [str(t) for t in tools] if isinstance(tools, dict) else []
    out = []
    for name, agent in agents.items() if isinstance(agents, dict) else ():
        listed = agent.get("tools") if isinstance(agent, dict) else None
        for i, tool in enumerate(listed if isinstance(listed, list) else ()):
            if isinstance(tool, str) and tool not in defined and tool not in PLATFORM_TOOLS:
                guess = closest(tool, defined)
                out.append(f"agents.{name}.tools[{i}]: no tool named {tool!r} is defined under "
                           "tools" + (f"; did you mean `{guess}`?" if guess else ""))
    return out


_BRANCH = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|function-\w+\[.*\])$")


def _unknown_key(path: tuple[str | int, ...]) -> str:
    known = known_keys(path[:-1])
    guess = closest(str(path[-1]), known)
    if guess:
        return f"{dotted(path)}: unknown key; did you mean `{guess}`?"
    return f"{dotted(path)}: unknown key" + (f"; expected one of: {', '.join(known)}"
                                            if known else "")


def _message(error: Any) -> str:
    """What was expected, in the author's terms."""
    if error["type"] == "missing":
        return "a required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if isinstance(error.get("input"), bool) and error["type"].startswith("string"):
        message += " (YAML reads unquoted yes/no/true/false/on/off as booleans: quote it)"
    elif isinstance(error.get("input"), dict) and error["type"].startswith("string"):
        message += (" (YAML reads {name} as a mapping: quote the value, or write "
                    "${NAME} to take it from the environment)")
    return message


def _validation_problems(err: ValidationError) -> list[str]:
    problems = []
    errors = err.errors()
    paths = [tuple(p for p in e["loc"] if not _BRANCH.match(str(p))) for e in errors]
    for e, path in zip(errors, paths, strict=True):
        # A value that may be one of several types fails once per type; keep the telling one
        # (a mapping given for `str | ApiKey` is told about its keys, not that it is no str).
        if e["type"] in ("string_type", "model_type", "dict_type") and (
                paths.count(path) > 1 or any(p[:len(path)] == path != p for p in paths)):
            continue
        if e["type"] == "extra_forbidden":
            problems.append(_unknown_key(path))
        else:  # a section's checks give one line per problem, each naming its own key
            loc = dotted(path)
            problems.extend(line if not path or line.startswith((f"{loc}.", f"{loc}:"))
                            else f"{loc}: {line}" for line in _message(e).split("\n"))
    return problems


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, KeyMarks]:
    """A YAML error's own words, placed at its own position."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = Mark(exc.problem_mark.line + 1, exc.problem_mark.column + 1)
        context = f" ({exc.context})" if exc.context else ""
        return f"not valid YAML: {exc.problem}{context}", KeyMarks(default=mark)
    return f"not valid YAML: {exc}", KeyMarks()


def parse_policy(text: str, source: str, env: Mapping[str, str]) -> LoadedPolicy:
    """Validate a policy given as YAML text; raises ConfigError listing every problem."""
    try:
        raw, marks = read_yaml(text)
    except yaml.YAMLError as exc:
        problem, marks = _yaml_problem(exc)
        raise ConfigError(source, [problem], marks=marks) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping of keys"], marks=marks)
    problems: list[str] = []
    expanded = _expand(raw, env, (), problems)
    # The version is the file's header, checked apart so that the rest is still validated.
    try:
        policy_version(expanded.pop("version", "2"))
    except ValueError as exc:
        problems.append(f"version: {exc}")
    problems.extend(_undefined_tools(expanded))
    try:
        config = PolicyConfig.model_validate(expanded)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc))
        raise ConfigError(source, problems, marks=marks) from None
    found = warnings(raw, config)
    if problems:
        raise ConfigError(source, problems, config, marks, found)
    return LoadedPolicy(config=config, source=source, warnings=found, marks=marks)


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
    if config.server.observability.tracing.enabled and not tracing_installed():
        out.append("server.observability.tracing: the otel extra is not installed "
                   "(pip install 'execgate[otel]'); no spans are exported")
    return out


def tracing_installed() -> bool:
    """Whether the ``otel`` extra (OpenTelemetry SDK and OTLP exporter) is importable."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in (
            "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc"))
    except ImportError:  # a parent package is missing (or broken: it fails to import)
        return False


