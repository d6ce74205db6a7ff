"""The daemon's side of the sandbox: inits in, jobs out, reports in.

The helper makes job inits ahead of need, one pool per kind of job (in effect per tool: its
view, /tmp, Landlock ruleset, cgroup limits, user and rlimits, prepared by the init while it
waits), and hands each to this process with a pidfd of it. A job goes straight to a waiting
init with its three pipe ends, and the init's report comes straight back: one hop each way,
the helper on neither. An init whose job left nothing behind says so in its verdict, which
follows the report, and goes back to its pool for the next job of its kind, so that a stream
of short commands costs no new init at all. Only a job whose kind has no waiting init asks
the helper for one, and waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from execgate.daemon.audit import Audit
from execgate.daemon.model import CommandPlan, Denial, DenialKind
from execgate.daemon.sandbox import _wire
from execgate.daemon.sandbox._cgroup_files import Events
from execgate.daemon.sandbox._cgroups import events
from execgate.daemon.sandbox._host import HostSupport, Layers, layers_for
from execgate.daemon.sandbox._linux import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID
from execgate.daemon.sandbox._protocol import (
    CgroupLimits,
    Counter,
    Forget,
    JobSpec,
    Kind,
    Offer,
    Ping,
    Ready,
    Refused,
    Report,
    Rules,
    Signal,
    View,
    Want,
)

POOL_SIZE = 2
"""Waiting inits per kind of job: enough for a burst to start without making one (inits
back from a job count too)."""
MAX_KINDS = 8
"""Kinds pooled at once; the least recently used kind's inits go first (a policy with many
tools keeps working, its rarely used ones cold)."""


@dataclass(frozen=True)
class ExitStatus:
    """How a job ended, as its init saw it."""

    exit_code: int
    signal: int
    user_time: float
    system_time: float
    max_rss_bytes: int
    oom_kills: int = 0
    pids_max_hits: int = 0
    error: str | None = None
    """The sandbox could not set the job up (nothing ran)."""


@dataclass(eq=False)
class _Init:
    """A waiting init, offered by the helper."""

    key: str
    pid: int
    sock: socket.socket
    pidfd: int
    counters: list[Counter]
    helper: int
    """Which helper made it (a restarted helper's inits are new ones)."""


class Job:
    """A command handed to the sandbox."""

    def __init__(self, job_id: int, spawner: Spawner, exited: asyncio.Future[ExitStatus],
                 layers: Layers) -> None:
        self.id = job_id
        self.exited = exited
        self.layers = layers
        """The kernel layers confining this job."""
        self._spawner = spawner
        self.init: _Init | None = None
        """Its init, once one took it."""
        self.killed = False
        self.early: list[int] = []
        """Signals sent before an init took it: sent on, then (the init holds them until
        the command exists)."""

    def signal_group(self, sig: int) -> None:
        """Signal the command's session; SIGKILL ends the whole job at once."""
        if not self.exited.done():
            self._spawner.signal(self, sig)


@dataclass
class _Waiting:
    """A job whose kind had no waiting init: its spec and its own copies of the pipe ends."""

    job: Job
    spec: JobSpec
    fds: list[int] = field(default_factory=list)


class SpawnerError(Exception):
    """The helper could not be started."""


class Spawner:
    """Starts the helper, keeps the inits it offers, and runs jobs in them."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket,
                 host: HostSupport, mountpoint: str) -> None:
        self._proc = proc
        self._sock = sock
        self.host = host
        self._mountpoint = mountpoint
        self._helper = 1
        self._ids = itertools.count(1)
        self._idle: dict[str, list[_Init]] = {}
        """Waiting inits by kind, the most recently used kind last."""
        self._reused: set[str] = set()
        """Kinds whose inits came back from a job: one taken needs no replacement while
        another waits."""
        self._told: set[str] = set()
        """Kinds the running helper has been told (a Want carries a kind only once)."""
        self._waiting: dict[str, collections.deque[_Waiting]] = {}
        self._running: dict[int, Job] = {}
        self._judging: set[_Init] = set()
        """Inits that reported and have yet to say whether they take another job."""
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._broken: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def start(cls) -> Spawner:
        """Start the helper (before any gRPC server exists) and wait for its host probe."""
        return cls(*_launch())

    def attach(self, loop: asyncio.AbstractEventLoop, audit: Audit) -> None:
        """Hear the helper and the inits on ``loop``; record the helper's deaths in
        ``audit``."""
        self._loop = loop
        self._audit = audit
        loop.add_reader(self._sock, self._on_message)

    def layers(self, plan: CommandPlan) -> Layers:
        """The layers ``plan`` gets here; raises Denial when a required one is missing."""
        return layers_for(plan.tool, plan.confinement, self.host)

    def spawn(self, plan: CommandPlan, layers: Layers, stdin: int, stdout: int,
              stderr: int) -> Job:
        """Run ``plan`` confined by ``layers`` (from ``Spawner.layers``): in a waiting init
        of its kind at once, else in the next one the helper makes."""
        if self._broken is not None:
            raise Denial(DenialKind.UNAVAILABLE, f"the sandbox helper is gone: {self._broken}")
        assert self._loop is not None
        kind, spec = job_message(plan, self.host.landlock_abi, layers, self._mountpoint)
        key = json.dumps(kind, sort_keys=True, separators=(",", ":"))
        job = Job(next(self._ids), self, self._loop.create_future(), layers)
        new_kind = key not in self._idle
        idle = self._use(key)
        if idle:
            self._dispatch(job, idle.pop(), spec, [stdin, stdout, stderr])
            if not idle or key not in self._reused:
                self._want(key, kind, urgent=False, count=1)
            return job
        # The caller closes its pipe ends when this returns: the waiting job keeps copies.
        waiting = _Waiting(job, spec, [os.dup(fd) for fd in (stdin, stdout, stderr)])
        self._waiting.setdefault(key, collections.deque()).append(waiting)
        self._want(key, kind, urgent=True, count=1)
        if new_kind:
            self._want(key, kind, urgent=False, count=POOL_SIZE)
        return job

    def signal(self, job: Job, sig: int) -> None:
        """Signal a job: SIGKILL kills its init through a pidfd (which cannot hit a recycled
        pid), and so the job's whole pid namespace; any other signal goes to the init as a
        message, which it forwards to the command's session."""
        if sig == signal.SIGKILL:
            job.killed = True
        if job.init is None:
            if sig == signal.SIGKILL and self._withdraw(job):
                job.exited.set_result(_killed())
            else:
                job.early.append(sig)
            return
        with contextlib.suppress(OSError):
            if sig == signal.SIGKILL:
                signal.pidfd_send_signal(job.init.pidfd, sig)
            else:
                _wire.send(job.init.sock, Signal(op="signal", signal=sig))

    async def ping(self, timeout: float) -> bool:
        """Whether the helper answers within ``timeout`` seconds: the watchdog's proof that
        it is not wedged (it makes every init)."""
        if self._broken is not None or self._loop is None:
            return False
        ping_id = next(self._ids)
        pong: asyncio.Future[None] = self._loop.create_future()
        self._pongs[ping_id] = pong
        try:
            _wire.send(self._sock, Ping(op="ping", id=ping_id))
            await asyncio.wait_for(pong, timeout)
        except (TimeoutError, OSError):
            return False
        finally:
            self._pongs.pop(ping_id, None)
        return True

    # -- jobs and inits -----------------------------------------------------------------

    def _use(self, key: str) -> list[_Init]:
        """The waiting inits of ``key``, now the most recently used kind; beyond MAX_KINDS
        the least recently used kind is forgotten and its inits end."""
        idle = self._idle.pop(key, [])
        self._idle[key] = idle
        while len(self._idle) > MAX_KINDS:
            old = next(iter(self._idle))
            for init in self._idle.pop(old):
                _close(init)  # end of stream: a waiting init exits by itself
            self._reused.discard(old)
            self._told.discard(old)
            self._send(Forget(op="forget", key=old))
        return idle

    def _want(self, key: str, kind: Kind, urgent: bool, count: int) -> None:
        told = key in self._told
        self._told.add(key)
        self._send(Want(op="want", key=key, kind=None if told else kind, urgent=urgent,
                        count=count))

    def _send(self, message: Want | Forget) -> None:
        if self._broken is None:
            with contextlib.suppress(OSError):  # a dead helper is found by its reader
                _wire.send(self._sock, message)

    def _dispatch(self, job: Job, init: _Init, spec: JobSpec, fds: list[int]) -> None:
        assert self._loop is not None
        try:
            _wire.send(init.sock, spec, fds)
        except OSError as exc:  # the init died waiting (its kind could not be prepared)
            _close(init)
            job.exited.set_result(_error(f"could not start the job: {exc.strerror}"))
            return
        job.init = init
        self._running[job.id] = job
        self._loop.add_reader(init.sock.fileno(), self._on_report, job)
        for sig in job.early:
            self.signal(job, sig)

    def _on_report(self, job: Job) -> None:
        assert self._loop is not None
        assert job.init is not None
        init = job.init
        try:
            report, _ = _wire.receive(init.sock)
        except (OSError, ValueError):
            report = None
        self._running.pop(job.id, None)
        limits = events(init.counters)
        if report is not None and not job.killed:  # its verdict comes next
            self._judging.add(init)
            self._loop.add_reader(init.sock.fileno(), self._on_verdict, init)
        else:
            self._loop.remove_reader(init.sock.fileno())
            _close(init)
        if report is not None:
            job.exited.set_result(_status(cast(Report, report), limits))
        elif job.killed or limits["oom_kills"]:  # killed whole: by us, or by the kernel
            job.exited.set_result(_killed(limits))
        else:
            # The init died unasked: its helper died (the inits die with it), or it was
            # killed from outside. Which one the helper's socket tells, maybe a moment later.
            self._loop.call_later(0.1, self._init_died, job, init.helper)

    def _on_verdict(self, init: _Init) -> None:
        """Whether the init that reported takes another job: reused, or ended."""
        assert self._loop is not None
        try:
            verdict, _ = _wire.receive(init.sock)
        except (OSError, ValueError):
            verdict = None
        self._loop.remove_reader(init.sock.fileno())
        self._judging.discard(init)
        if verdict is not None and verdict.get("again") and self._broken is None:
            self._reuse(init)
        else:
            _close(init)

    def _reuse(self, init: _Init) -> None:
        """An init back from a job it left nothing of: placed like a new one, unless a
        helper that has since died made it."""
        self._reused.add(init.key)
        if init.helper != self._helper:
            _close(init)
        else:
            self._place(init)

    def _init_died(self, job: Job, helper: int) -> None:
        if not job.exited.done():
            why = ("the sandbox helper is gone" if helper != self._helper or self._broken
                   else "the job's init was killed from outside the daemon")
            job.exited.set_result(_error(why))

    def _withdraw(self, job: Job) -> bool:
        """Take a job no init has yet off its queue; whether it was there."""
        for queue in self._waiting.values():
            for waiting in queue:
                if waiting.job is job:
                    queue.remove(waiting)
                    for fd in waiting.fds:
                        os.close(fd)
                    return True
        return False

    # -- the helper ---------------------------------------------------------------------

    def _on_message(self) -> None:
        try:
            message, fds = _wire.receive(self._sock)
        except OSError as exc:
            message, fds = None, []
            self._broken = str(exc)
        if message is None:
            self._fail_all(self._broken or "it exited")
            self._restart()
            return
        if message["op"] == "init":
            self._offered(cast(Offer, message), fds)
        elif message["op"] == "refused":
            refused = cast(Refused, message)
            queue = self._waiting.get(refused["key"])
            if queue:
                waiting = queue.popleft()
                for fd in waiting.fds:
                    os.close(fd)
                waiting.job.exited.set_result(_error(refused["error"]))
        elif message["op"] == "pong":
            pong = self._pongs.pop(message["id"], None)
            if pong is not None and not pong.done():
                pong.set_result(None)

    def _offered(self, offer: Offer, fds: list[int]) -> None:
        sock = socket.socket(fileno=fds[0])
        # Never blocks the event loop: a spec goes to an init that waits for it, a report is
        # read when readable, and a signal its init cannot take now (the command ended, it
        # is cleaning up) is moot.
        sock.setblocking(False)
        self._place(_Init(offer["key"], offer["pid"], sock, fds[1], offer["counters"],
                          self._helper))

    def _place(self, init: _Init) -> None:
        """A waiting init: to the first job waiting for its kind, else into its pool while
        the kind is pooled and its pool short of POOL_SIZE, else ended."""
        queue = self._waiting.get(init.key)
        if queue:
            waiting = queue.popleft()
            try:
                self._dispatch(waiting.job, init, waiting.spec, waiting.fds)
            finally:
                for fd in waiting.fds:
                    os.close(fd)
        elif len(self._idle.get(init.key, [None] * POOL_SIZE)) < POOL_SIZE:
            self._idle[init.key].append(init)
        else:  # a kind forgotten meanwhile, or made for a job that was withdrawn
            _close(init)  # end of stream: a waiting init exits by itself

    def _restart(self) -> None:
        """A helper that died is replaced, so that one crash does not refuse every later call.
        The new one is a fresh exec, like the first: this process still never forks."""
        self._sock.close()
        self._proc.wait()
        self._audit.helper_died(self._proc.returncode, self._broken or "it exited")
        try:
            self._proc, self._sock, self.host, self._mountpoint = _launch()
        except (SpawnerError, OSError) as exc:
            self._broken = f"it died and could not be restarted: {exc}"
            self._audit.helper_restart_failed(str(exc))
            return
        self._broken = None
        self._helper += 1
        self._told.clear()  # a new helper knows no kind yet
        if self._loop is not None:
            self._loop.add_reader(self._sock, self._on_message)
        self._audit.helper_restarted(self._proc.pid)

    def _fail_all(self, reason: str) -> None:
        """The helper is gone, and with it every init it made: waiting jobs fail now,
        running ones when their inits' sockets close (``_init_died``)."""
        self._broken = reason
        if self._loop is not None:
            self._loop.remove_reader(self._sock)
        for idle in self._idle.values():
            for init in idle:
                _close(init)
        self._idle.clear()
        for queue in self._waiting.values():
            for waiting in queue:
                for fd in waiting.fds:
                    os.close(fd)
                waiting.job.exited.set_result(_error(f"the sandbox helper is gone: {reason}"))
        self._waiting.clear()

    def close(self) -> None:
        """Stop the helper; it kills every init it made, and so every job."""
        if self._loop is not None and self._broken is None:
            self._loop.remove_reader(self._sock)
        self._broken = "the daemon is stopping"
        for idle in self._idle.values():
            for init in idle:
                _close(init)
        self._idle.clear()
        for init in self._judging:
            if self._loop is not None:
                self._loop.remove_reader(init.sock.fileno())
            _close(init)
        self._judging.clear()
        self._sock.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()


def _close(init: _Init) -> None:
    init.sock.close()
    with contextlib.suppress(OSError):
        os.close(init.pidfd)


def _status(report: Report, limits: Events) -> ExitStatus:
    if "error" in report:
        return _error(report["error"])
    status = report["status"]
    user, system, rss = report["rusage"]
    return ExitStatus(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
        user_time=user, system_time=system, max_rss_bytes=int(rss),
        oom_kills=limits["oom_kills"], pids_max_hits=limits["pids_max_hits"])


def _killed(limits: Events | None = None) -> ExitStatus:
    limits = limits or {}
    return ExitStatus(exit_code=0, signal=signal.SIGKILL, user_time=0, system_time=0,
                      max_rss_bytes=0, oom_kills=limits.get("oom_kills", 0),
                      pids_max_hits=limits.get("pids_max_hits", 0))


def _error(reason: str) -> ExitStatus:
    return ExitStatus(exit_code=0, signal=0, user_time=0, system_time=0, max_rss_bytes=0,
                      error=reason)


def _launch() -> tuple[subprocess.Popen[bytes], socket.socket, HostSupport, str]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "execgate.daemon.sandbox._helper",
         str(theirs.fileno()), str(os.getpid())],
        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
        # A group of its own: a signal to the daemon's group (Ctrl-C) would reach every
        # job's init, which forwards it to the command, and so cut short the daemon's drain.
        process_group=0, env={"PATH": "/usr/bin:/bin"})
    theirs.close()
    message, _ = _wire.receive(ours)
    if message is None or message.get("op") != "ready":
        proc.wait()
        ours.close()
        raise SpawnerError(f"the sandbox helper did not start (status {proc.returncode})")
    ready = cast(Ready, message)
    return proc, ours, HostSupport.from_probe(ready["host"]), ready["mountpoint"]


_RLIMITS = (("RLIMIT_CPU", "cpu_time"), ("RLIMIT_FSIZE", "file_size"),
            ("RLIMIT_NOFILE", "open_files"), ("RLIMIT_AS", "address_space"))


def job_message(plan: CommandPlan, landlock_abi: int, layers: Layers,
                mountpoint: str) -> tuple[Kind, JobSpec]:
    """What an init prepares for ``plan`` under ``layers`` (its kind), and what only this
    job says (its spec). ``mountpoint`` is the helper's empty directory that inits mount
    on."""
    c = plan.confinement
    rlimits: dict[str, int] = {"RLIMIT_CORE": 0}
    for name, key in _RLIMITS:
        value = getattr(c, key)
        if value is not None:
            rlimits[name] = int(value + 0.999) if key == "cpu_time" else int(value)
    flags = 0
    if layers.namespaces:
        flags = CLONE_NEWPID | CLONE_NEWNS | (0 if c.network else CLONE_NEWNET)
    env = dict(plan.env)
    write = list(c.write_paths)
    tmp_dir = None
    if layers.namespaces and c.tmp_size:
        # A private tmpfs on /tmp, unless that would hide a jail under /tmp and there is no
        # view (in a view, the jail is bound onto the private /tmp).
        jail_in_tmp = plan.jail == Path("/tmp") or plan.jail.is_relative_to("/tmp")
        tmp_dir = mountpoint if jail_in_tmp and not layers.view else "/tmp"
        env["TMPDIR"] = tmp_dir
        write += [tmp_dir, "/dev/shm"] if layers.view else [tmp_dir]
    kind = Kind(
        flags=flags, tmp_dir=tmp_dir, tmp_size=c.tmp_size if tmp_dir else 0,
        jail=str(plan.jail), rlimits=rlimits, uid=c.uid, gid=c.gid,
        view=View(read=list(c.read_paths), write=list(c.write_paths),
                  unix_sockets=list(c.unix_sockets)) if layers.view else None,
        landlock=Rules(read=list(c.read_paths), write=write, deny_tcp=not c.network,
                       abi=landlock_abi) if layers.landlock else None,
        cgroup=CgroupLimits(pids_max=c.processes, memory_max=c.memory)
        if layers.cgroup else None)
    spec = JobSpec(executable=plan.executable, argv=list(plan.argv), env=env,
                   cwd=str(plan.cwd), cwd_identity=list(plan.cwd_identity))
    return kind, spec
