"""What the client hands back: plain frozen dataclasses, no protobuf."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class TLSConfig:
    """TLS to the daemon. With ``cert`` and ``key``, mutual TLS."""

    ca: str | None = None
    """PEM file of the CA that signed the daemon's certificate; None uses the system's."""
    cert: str | None = None
    """PEM file of this client's certificate, for a daemon that requires one."""
    key: str | None = None
    """PEM file of its private key."""

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files."""
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


class ExitReason(enum.Enum):
    """Why a run ended."""

    UNSPECIFIED = 0
    EXITED = 1
    """The command exited by itself; see ``exit_code``."""
    SIGNALED = 2
    """The command was killed by a signal the daemon did not send; see ``signal``."""
    TIMEOUT = 3
    """The daemon stopped it at its deadline."""
    OUTPUT_LIMIT = 4
    """The daemon stopped it when its output passed the limit."""
    CANCELLED = 5
    """The call was cancelled."""
    TOOL_ERROR = 6
    """A function tool failed; see ``message``."""
    MEMORY_LIMIT = 7
    """The kernel killed the job at its memory limit."""
    PIDS_LIMIT = 8
    """The job hit its process limit: forks were refused (``exit_code`` says how it ended)."""
    SANDBOX_ERROR = 9
    """The sandbox could not set the job up; nothing ran. See ``message``."""
    DAEMON_STOPPING = 10
    """The daemon was stopping and stopped the command; retry when it is back."""
    IDLE_TIMEOUT = 11
    """The command wrote nothing for its tool's ``idle_timeout`` and was stopped."""


@dataclass(frozen=True)
class Sandbox:
    """The kernel layers confining a command."""

    filesystem: bool
    """Landlock: system paths readable, writes only in the jail and a private /tmp."""
    namespaces: bool
    """Own pid and mount namespaces: no process outlives the job."""
    cgroup: bool
    """Per-job cgroup: ``processes`` and ``memory_bytes`` are enforced."""
    network: bool
    run_as: str
    view: bool = False
    """A root of the job's own: no host sockets, /run or /home exist for it."""


@dataclass(frozen=True)
class Plan:
    """Exactly what the daemon runs for a call."""

    agent: str
    tool: str
    executable: str
    """Absolute path of the executable, or ``function:<handler>``."""
    argv: tuple[str, ...]
    cwd: str
    env_names: tuple[str, ...]
    timeout: float
    output_limit_bytes: int
    sandbox: Sandbox | None = None
    """None for function tools, which run inside the daemon."""
    cpu_time: float | None = None
    memory_bytes: int = 0
    """0: no bound."""
    processes: int = 0
    """0: no bound."""
    open_files: int = 0
    file_size_bytes: int = 0


@dataclass(frozen=True)
class Started:
    """The call passed the policy and is running."""

    run_id: str
    plan: Plan


@dataclass(frozen=True)
class OutputChunk:
    """A piece of the command's stdout or stderr, with its offset in that stream."""

    stream: str
    """``stdout`` or ``stderr``."""
    offset: int
    data: bytes


@dataclass(frozen=True)
class Exited:
    """How a run ended and what it cost."""

    reason: ExitReason
    exit_code: int
    signal: int
    message: str
    wall_time: float
    user_time: float
    system_time: float
    max_rss_bytes: int
    stdout_bytes: int
    stderr_bytes: int
    dropped_bytes: int


@dataclass(frozen=True)
class ApprovalRequested:
    """The call waits for a human decision; nothing runs until it is approved."""

    approval_id: str
    prompt: str
    """The policy's question, with every substituted value escaped."""
    plan: Plan
    """Exactly what runs if approved."""
    plan_digest: str
    requester: str
    expires_at: float
    """Wall-clock seconds."""


@dataclass(frozen=True)
class ApprovalResolved:
    """A pending approval was decided, expired or withdrawn (``watch_approvals``)."""

    approval_id: str
    outcome: str
    decider: str


@dataclass(frozen=True)
class ApprovalDecision:
    """What an ``on_approval`` callback may return when it wants to give a reason."""

    approve: bool
    reason: str = ""


Event = Started | OutputChunk | Exited | ApprovalRequested


class _Ended:
    """How a finished call ended, said as subprocess says it."""

    exit: Exited

    @property
    def exit_code(self) -> int:
        """The command's exit status (0 when it was killed by a signal)."""
        return self.exit.exit_code

    @property
    def reason(self) -> ExitReason:
        """Why the run ended."""
        return self.exit.reason

    @property
    def signal(self) -> int:
        """The signal that killed the command, or 0."""
        return self.exit.signal

    @property
    def ok(self) -> bool:
        """Whether the command exited by itself with status 0."""
        return self.exit.reason is ExitReason.EXITED and self.exit.exit_code == 0


@dataclass(frozen=True)
class RunResult(_Ended):
    """A finished call: its output and how it ended."""

    run_id: str
    plan: Plan
    stdout: bytes
    stderr: bytes
    exit: Exited

    def decoded(self, encoding: str = "utf-8") -> TextRunResult:
        """The same result with its output as text (undecodable bytes replaced)."""
        return TextRunResult(self.run_id, self.plan, self.stdout.decode(encoding, "replace"),
                             self.stderr.decode(encoding, "replace"), self.exit)


@dataclass(frozen=True)
class TextRunResult(_Ended):
    """A finished call whose output was asked for as text (``text=True``)."""

    run_id: str
    plan: Plan
    stdout: str
    stderr: str
    exit: Exited


class RunState(enum.Enum):
    """Whether a run is still going."""

    UNSPECIFIED = 0
    RUNNING = 1
    EXITED = 2
    """Ended; its exit and output stay attachable for the daemon's runs.retention."""


@dataclass(frozen=True)
class RunInfo:
    """One of the caller's runs, as ``runs()`` lists it."""

    run_id: str
    state: RunState
    subject: str
    """Who started it."""
    agent: str
    tool: str
    argv: tuple[str, ...]
    started_at: float
    """Wall-clock seconds."""
    stdout_bytes: int
    stderr_bytes: int
    detached: bool
    """Whether it goes on when its callers go away."""
    attached: int
    """Streams reading it now."""
    replay_dropped_bytes: int
    """Output the daemon's replay buffer no longer holds."""
    exit: Exited | None
    """How it ended; None while it runs."""


@dataclass(frozen=True)
class ToolInfo:
    """A tool an agent has."""

    name: str
    type: str
    """``command`` or ``function``."""
    handler: str
    require_approval: bool
    allowed_commands: tuple[str, ...]
    deny_by_default: bool
    description: str = ""
    """What the tool does, as a model should read it (the daemon adds the allowlist)."""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    """JSON Schema of the tool's input (empty from a daemon that sends none)."""


@dataclass(frozen=True)
class AgentInfo:
    """An agent the caller can see."""

    name: str
    visibility: str
    tools: tuple[ToolInfo, ...]
