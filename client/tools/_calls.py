"""A model's tool call, run on the daemon: JSON arguments in, a ToolOutcome out.

Models write JSON (numbers, booleans, lists); the wire takes argv and string arguments. A
refusal the model can act on (a policy rule, a human's no, a bad argument, an unknown tool)
comes back as an outcome naming the rule, not as an exception: the model reads it and tries
something else. What no model can fix (authentication, an unreachable daemon) is raised.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from execgate.client._client import AsyncClient, AsyncOnApproval, Client, OnApproval
from execgate.client._exceptions import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RPCError,
)
from execgate.client._models import Event, Exited, ExitReason, OutputChunk

REFUSALS = (PermissionDeniedError, InvalidArgumentError, NotFoundError, RateLimitedError)
"""Errors a model can act on: a rule, a human, its own arguments, a limit."""


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call came to, as a model reads it."""

    stdout: str
    stderr: str
    exit_code: int | None
    """The command's exit status; None when nothing ran or it did not exit by itself."""
    reason: str
    """``exited``, ``timeout``, ``output_limit`` ... (how a run ended), or the daemon's
    refusal: ``policy_denied``, ``approval_denied``, ``invalid_argument`` ..."""
    message: str = ""
    """Why, in words, when the run did not simply exit."""
    rule: str = ""
    """The policy key that refused the call."""

    @property
    def is_error(self) -> bool:
        """Whether the call was refused or did not exit with status 0."""
        return self.reason != "exited" or self.exit_code != 0

    def as_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready fields."""
        return asdict(self)

    def to_json(self) -> str:
        """The outcome as the JSON text a model is given."""
        return json.dumps(self.as_dict())


@dataclass(frozen=True)
class Request:
    """A tool call's arguments, as the client's ``stream`` takes them."""

    argv: list[str] | None
    arguments: dict[str, str]
    cwd: str = ""
    env: dict[str, str] | None = None
    timeout: float | None = None
    stdin: bytes | None = None


class BadArguments(ValueError):
    """The model's arguments do not fit the tool's schema."""


def _wire(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise BadArguments(f"argument value {value!r} is not a string, number or boolean")


def request(arguments: Mapping[str, Any] | str) -> Request:
    """The call for a model's ``arguments`` (a JSON object, or its text): ``argv`` makes it a
    command call, anything else names a function tool's arguments."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            raise BadArguments("the tool call's arguments are not JSON") from None
    if not isinstance(arguments, Mapping):
        raise BadArguments("the tool call's arguments are not a JSON object")
    if "argv" not in arguments:
        return Request(argv=None, arguments={k: _wire(v) for k, v in arguments.items()})
    args = dict(arguments)
    argv, env, timeout, stdin = (args.pop(k, None) for k in ("argv", "env", "timeout", "stdin"))
    cwd = args.pop("cwd", "")
    if args:
        raise BadArguments(f"a command tool takes argv, cwd, timeout, env and stdin, not "
                           f"{', '.join(sorted(args))}")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise BadArguments("argv must be a non-empty list of strings")
    if not isinstance(cwd, str) or not isinstance(stdin, str | None):
        raise BadArguments("cwd and stdin must be strings")
    if env is not None and not (isinstance(env, dict)
                                and all(isinstance(v, str) for v in env.values())):
        raise BadArguments("env must map names to strings")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise BadArguments("timeout must be a number of seconds")
    return Request(argv=argv, arguments={}, cwd=cwd, env=env,
                   timeout=float(timeout) if timeout is not None else None,
                   stdin=stdin.encode() if stdin is not None else None)


class Fold:
    """Folds a call's events into its ToolOutcome."""

    def __init__(self) -> None:
        self._out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._exited: Exited | None = None

    def add(self, event: Event) -> None:
        """Take one event of the call."""
        if isinstance(event, OutputChunk):
            self._out[event.stream].append(event.data)
        elif isinstance(event, Exited):
            self._exited = event

    def outcome(self) -> ToolOutcome:
        """The outcome, once the call has exited."""
        out = {k: b"".join(v).decode(errors="replace") for k, v in self._out.items()}
        e = self._exited
        if e is None:
            return ToolOutcome(out["stdout"], out["stderr"], None, "cancelled",
                               "the call ended without an exit")
        exited = e.reason is ExitReason.EXITED
        return ToolOutcome(out["stdout"], out["stderr"], e.exit_code if exited else None,
                           e.reason.name.lower(), e.message)


def refusal(error: RPCError | BadArguments) -> ToolOutcome:
    """The outcome of a call the daemon (or the model's own arguments) refused."""
    if isinstance(error, BadArguments):
        return ToolOutcome("", "", None, "invalid_argument", str(error))
    return ToolOutcome("", "", None, error.error or error.status.name.lower(), error.message,
                       error.rule)


def _events(client: Client, agent: str, tool: str, req: Request,
            on_approval: OnApproval | None) -> Iterator[Event]:
    return client.stream(req.argv, agent=agent, tool=tool, arguments=req.arguments,
                         cwd=req.cwd, env=req.env, timeout=req.timeout, stdin=req.stdin,
                         on_approval=on_approval)


def run_tool(client: Client, tool: str, arguments: Mapping[str, Any] | str, *,
             agent: str = "", on_approval: OnApproval | None = None) -> ToolOutcome:
    """Run a model's call of ``tool`` and wait for its outcome."""
    fold = Fold()
    try:
        for event in _events(client, agent, tool, request(arguments), on_approval):
            fold.add(event)
    except REFUSALS as refused:
        return refusal(refused)
    except BadArguments as bad:
        return refusal(bad)
    return fold.outcome()


def events_async(client: AsyncClient, agent: str, tool: str, req: Request,
                 on_approval: AsyncOnApproval | None) -> AsyncIterator[Event]:
    """The call's events, from an AsyncClient."""
    return client.stream(req.argv, agent=agent, tool=tool, arguments=req.arguments,
                         cwd=req.cwd, env=req.env, timeout=req.timeout, stdin=req.stdin,
                         on_approval=on_approval)


async def run_tool_async(client: AsyncClient, tool: str, arguments: Mapping[str, Any] | str, *,
                         agent: str = "",
                         on_approval: AsyncOnApproval | None = None) -> ToolOutcome:
    """Run a model's call of ``tool`` and wait for its outcome, without blocking the loop."""
    fold = Fold()
    try:
        async for event in events_async(client, agent, tool, request(arguments), on_approval):
            fold.add(event)
    except REFUSALS as refused:
        return refusal(refused)
    except BadArguments as bad:
        return refusal(bad)
    return fold.outcome()
