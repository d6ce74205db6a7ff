"""The messages between the daemon, the sandbox helper and the job inits, typed.

Three parties, three conversations (each over its own SOCK_SEQPACKET socket, see ``_wire``):

- daemon -> helper: ``Want`` (more inits of a kind), ``Forget`` (a kind no longer
  pooled), ``Ping``; helper -> daemon: ``Ready`` (once: what the host supports), ``Offer``
  (an init, its socket and pidfd attached), ``Refused``, ``Pong``.
- daemon -> init: a ``JobSpec``, with the job's stdin, stdout and stderr attached, then any
  ``Signal`` for it; init -> daemon: the job's ``Report``, then a ``Verdict``: whether the
  init takes another job of its kind (its checks run after the report, off the job's
  caller's path). The helper is not on a job's path at all: it only makes
  inits, ahead of need, and reaps them.

Plain module (TypedDicts): the helper and the inits import it, with no asyncio or structlog.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class View(TypedDict):
    """A job's own root (``_view``)."""

    read: list[str]
    write: list[str]
    unix_sockets: list[str]


class Rules(TypedDict):
    """A job's Landlock ruleset."""

    read: list[str]
    write: list[str]
    deny_tcp: bool
    abi: int


class CgroupLimits(TypedDict):
    """A job's cgroup limits; None: no bound."""

    pids_max: int | None
    memory_max: int | None


class Kind(TypedDict):
    """What an init prepares before its jobs, and so what the jobs of one pool share: in
    effect, the tool's confinement. Its canonical JSON is the pool's key."""

    flags: int
    """Clone flags: pid, mount and network namespaces."""
    tmp_dir: str | None
    """Where the private tmpfs goes (None: no private /tmp)."""
    tmp_size: int
    view: View | None
    landlock: Rules | None
    cgroup: CgroupLimits | None
    jail: str | None
    """The jail the jobs' working directories lie beneath (None: a probe, no jobs)."""
    rlimits: dict[str, int]
    uid: int | None
    """The jobs' user and group (None: the init's own)."""
    gid: int | None


class JobSpec(TypedDict):
    """What only the job itself says: what runs, where."""

    executable: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    cwd_identity: list[int]
    """The working directory's (st_dev, st_ino) when the policy checked it."""


class Signal(TypedDict):
    """Forward ``signal`` to the running command's session (daemon -> init, after the
    spec: a signal sent to the init could not say which of its jobs it was meant for)."""

    op: Literal["signal"]
    signal: int


class Report(TypedDict):
    """How the command ended (a wait status and its rusage), or why nothing ran."""

    status: NotRequired[int]
    rusage: NotRequired[list[float]]
    error: NotRequired[str]


class Verdict(TypedDict):
    """After a report: whether the init takes another job of its kind (else it exits)."""

    again: bool


class Counter(TypedDict):
    """One cgroup event counter of an init's job cgroups, and its value when the init was
    made: a job's events are the growth since."""

    name: str
    """``oom_kills`` or ``pids_max_hits``."""
    path: str
    key: str
    base: int


class Want(TypedDict):
    """Make ``count`` more inits of ``kind``: ``urgent``, at once (a job is waiting for
    it), else when the helper is quiet (spares, so that later jobs wait for none)."""

    op: Literal["want"]
    key: str
    kind: Kind | None
    """Sent with the first Want of a key only (the helper keeps it until a Forget)."""
    urgent: bool
    count: int


class Refused(TypedDict):
    """An urgent Want the helper could not serve: the job waiting for it cannot start."""

    op: Literal["refused"]
    key: str
    error: str


class Forget(TypedDict):
    """Stop making inits of this kind."""

    op: Literal["forget"]
    key: str


class Ping(TypedDict):
    """Are you there (the watchdog)?"""

    op: Literal["ping"]
    id: int


class Pong(TypedDict):
    """The helper's answer to a Ping."""

    op: Literal["pong"]
    id: int


class Ready(TypedDict):
    """The helper is up: what the host supports, and the directory inits mount on."""

    op: Literal["ready"]
    host: dict[str, Any]
    mountpoint: str


class Offer(TypedDict):
    """A new init of ``key``: its socket and a pidfd come attached, in that order."""

    op: Literal["init"]
    key: str
    pid: int
    counters: list[Counter]
