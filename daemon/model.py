"""The daemon's own vocabulary: what flows between the steps of a tool call.

gRPC messages stop at the service layer; below it every step speaks these small types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established by the credential alone."""

    subject: str
    """Stable name of the caller, e.g. an API key's name or a token's ``sub``."""
    method: str
    """How the caller was authenticated: ``api_key``, ``jwt``, ``mtls``, ``unix`` or
    ``anonymous``."""
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """A JWT's verified claims (roles, scopes ...); empty for other credentials."""
    local: bool = False
    """The call came over a unix socket from an allowed uid: private agents are callable."""

    @property
    def authenticated(self) -> bool:
        """Whether a credential backed this principal."""
        return self.method != "anonymous"


ANONYMOUS = Principal(subject="anonymous", method="anonymous")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A caller's request to run one tool, as it arrived (not yet trusted)."""

    agent: str
    tool: str
    argv: tuple[str, ...] = ()
    arguments: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    """Requested deadline in seconds; ``None`` means the tool's maximum."""
    stdin: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to one run."""

    timeout: float
    """Seconds until the run is stopped with reason TIMEOUT."""
    output_limit_bytes: int
    """stdout and stderr bytes together that are streamed before the run is stopped."""
    kill_grace: float
    """Seconds between SIGTERM and SIGKILL when the daemon stops a run."""
    idle_timeout: float | None = None
    """Seconds without output after which the run is stopped with reason IDLE_TIMEOUT."""


@dataclass(frozen=True, slots=True)
class Confinement:
    """The kernel confinement of a command, resolved from the policy for one tool."""

    filesystem: str
    """Landlock layer: ``required``, ``optional`` or ``off``."""
    namespaces: str
    """pid + mount namespace layer."""
    cgroup: str
    """per-job cgroup layer."""
    view: str
    """A root of the job's own (no host sockets, /run, /home): ``required``, ``optional``
    or ``off``."""
    unix_sockets: tuple[str, ...]
    """Host unix sockets the job may reach: bound into its view, and nothing else is."""
    network: bool
    uid: int | None
    """User to run as; None keeps the daemon's own (when it is not root)."""
    gid: int | None
    user: str
    read_paths: tuple[str, ...]
    write_paths: tuple[str, ...]
    cpu_time: float | None
    file_size: int | None
    open_files: int | None
    address_space: int | None
    processes: int | None
    memory: int | None
    tmp_size: int


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """Exactly what runs for a command tool call: the policy's verdict made concrete."""

    agent: str
    tool: str
    executable: str
    """Absolute path resolved through the daemon's PATH; this, not argv[0], is executed."""
    argv: tuple[str, ...]
    cwd: Path
    """Real path of the working directory, inside the tool's jail."""
    cwd_identity: tuple[int, int]
    """(st_dev, st_ino) of ``cwd`` as the policy resolved it beneath the jail. The job's init
    enters ``cwd`` only if it is still this very directory: a path swapped between the
    check and the start is refused, never followed."""
    env: dict[str, str]
    limits: Limits
    stdin: bool
    jail: Path
    """Real path of the tool's working_directory."""
    confinement: Confinement


@dataclass(frozen=True, slots=True)
class FunctionPlan:
    """A built-in function tool call with its validated arguments."""

    agent: str
    tool: str
    handler: str
    arguments: dict[str, str]
    jail: Path
    limits: Limits
    max_file_bytes: int

    @property
    def executable(self) -> str:
        """What the audit shows in place of an executable."""
        return f"function:{self.handler}"


Plan = CommandPlan | FunctionPlan


class Verdict(enum.Enum):
    """The policy's answer to a tool call."""

    ALLOW = "allow"
    DENY = "deny"


class DenialKind(enum.Enum):
    """Why a call was refused, machine-readably; the service maps each to a gRPC status."""

    INVALID_ARGUMENT = "invalid_argument"
    AGENT_NOT_FOUND = "agent_not_found"
    TOOL_NOT_FOUND = "tool_not_found"
    POLICY_DENIED = "policy_denied"
    PERMISSION_DENIED = "permission_denied"
    COMMAND_NOT_FOUND = "command_not_found"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_NOT_FOUND = "approval_not_found"
    APPROVAL_EXPIRED = "approval_expired"
    RUN_NOT_FOUND = "run_not_found"


class Denial(Exception):
    """A refusal: what was refused (``message``), which rule refused it (``rule``).

    A plain exception, not a frozen dataclass: Python sets ``__traceback__`` on exceptions
    as they travel, which a frozen dataclass refuses.
    """

    def __init__(self, kind: DenialKind, message: str, rule: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(kind, message, rule)
        self.kind = kind
        self.message = message
        self.rule = rule
        """Key path of the policy rule that refused, e.g. ``tools.shell.denied_commands``."""
        self.retry_after = retry_after
        """Seconds until a retry can succeed, when a limit knows it."""

    def __str__(self) -> str:
        return f"{self.message} (rule: {self.rule})" if self.rule else self.message


class Stream(enum.Enum):
    """An output stream of a run."""

    STDOUT = 1
    STDERR = 2


class ExitReason(enum.Enum):
    """Why a run ended."""

    EXITED = 1
    SIGNALED = 2
    TIMEOUT = 3
    OUTPUT_LIMIT = 4
    CANCELLED = 5
    TOOL_ERROR = 6
    MEMORY_LIMIT = 7
    PIDS_LIMIT = 8
    SANDBOX_ERROR = 9
    DAEMON_STOPPING = 10
    """The daemon was told to stop (SIGTERM, SIGINT) and stopped the run."""
    IDLE_TIMEOUT = 11
    """The command wrote nothing for its tool's idle_timeout."""


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of output, with its offset in its stream."""

    stream: Stream
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Exit:
    """The end of a run: how it ended and what it cost."""

    reason: ExitReason
    exit_code: int = 0
    signal: int = 0
    message: str = ""
    wall_time: float = 0.0
    user_time: float = 0.0
    system_time: float = 0.0
    max_rss_bytes: int = 0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    dropped_bytes: int = 0


RunEvent = Output | Exit
