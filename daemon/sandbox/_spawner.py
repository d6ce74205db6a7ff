"""The daemon's side of the sandbox helper: job specs out, exit reports in.

Spawning does not wait for the helper: the job's spec and its three pipe ends go out in one
message and the run starts streaming at once; the helper's ``exited`` report resolves the
job's future.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from execgate.daemon.audit import Audit
from execgate.daemon.model import CommandPlan, Denial, DenialKind
from execgate.daemon.sandbox import _wire
from execgate.daemon.sandbox._host import HostSupport, Layers, layers_for


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


class Job:
    """A command handed to the helper."""

    def __init__(self, job_id: int, spawner: Spawner, exited: asyncio.Future[ExitStatus],
                 layers: Layers) -> None:
        self.id = job_id
        self.exited = exited
        self.layers = layers
        """The kernel layers confining this job."""
        self._spawner = spawner

    def signal_group(self, sig: int) -> None:
        """Signal the command's session; SIGKILL ends the whole job at once."""
        if not self.exited.done():
            self._spawner.signal(self.id, sig)


class SpawnerError(Exception):
    """The helper could not be started."""


def _status(message: dict[str, Any]) -> ExitStatus:
    if "error" in message:
        return ExitStatus(exit_code=0, signal=0, user_time=0, system_time=0, max_rss_bytes=0,
                          error=message["error"])
    status = message["status"]
    user, system, rss = message["rusage"]
    return ExitStatus(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
        user_time=user, system_time=system, max_rss_bytes=rss,
        oom_kills=message.get("oom_kills", 0), pids_max_hits=message.get("pids_max_hits", 0))


class Spawner:
    """Starts the helper and speaks to it."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket,
                 host: HostSupport) -> None:
        self._proc = proc
        self._sock = sock
        self.host = host
        self._ids = itertools.count(1)
        self._jobs: dict[int, asyncio.Future[ExitStatus]] = {}
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._broken: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def start(cls) -> Spawner:
        """Start the helper (before any gRPC server exists) and wait for its host probe."""
        return cls(*_launch())

    def attach(self, loop: asyncio.AbstractEventLoop, audit: Audit) -> None:
        """Receive the helper's reports on ``loop``; record the helper's deaths in ``audit``."""
        self._loop = loop
        self._audit = audit
        loop.add_reader(self._sock, self._on_message)

    def layers(self, plan: CommandPlan) -> Layers:
        """The layers ``plan`` gets here; raises Denial when a required one is missing."""
        return layers_for(plan.tool, plan.confinement, self.host)

    def spawn(self, plan: CommandPlan, layers: Layers, stdin: int, stdout: int,
              stderr: int) -> Job:
        """Hand ``plan`` to the helper, confined by ``layers`` (from ``Spawner.layers``)."""
        if self._broken is not None:
            raise Denial(DenialKind.UNAVAILABLE, f"the sandbox helper is gone: {self._broken}")
        assert self._loop is not None
        job_id = next(self._ids)
        spec = job_spec(plan, self.host.landlock_abi, layers)
        exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._jobs[job_id] = exited
        _wire.send(self._sock, {"op": "spawn", "job": job_id, **spec}, [stdin, stdout, stderr])
        return Job(job_id, self, exited, layers)

    def signal(self, job_id: int, sig: int) -> None:
        """Ask the helper to signal a job (it alone knows whether the job is still alive)."""
        if self._broken is None:
            _wire.send(self._sock, {"op": "signal", "job": job_id, "signal": sig})

    async def ping(self, timeout: float) -> bool:
        """Whether the helper answers within ``timeout`` seconds: the watchdog's proof that
        it is not wedged (its loop serves every spawn)."""
        if self._broken is not None or self._loop is None:
            return False
        ping_id = next(self._ids)
        pong: asyncio.Future[None] = self._loop.create_future()
        self._pongs[ping_id] = pong
        try:
            _wire.send(self._sock, {"op": "ping", "id": ping_id})
            await asyncio.wait_for(pong, timeout)
        except (TimeoutError, OSError):
            return False
        finally:
            self._pongs.pop(ping_id, None)
        return True

    def _on_message(self) -> None:
        try:
            message, _ = _wire.receive(self._sock)
        except OSError as exc:
            message = None
            self._broken = str(exc)
        if message is None:
            self._fail_all(self._broken or "it exited")
            self._restart()
            return
        if message.get("op") == "pong":
            pong = self._pongs.pop(message["id"], None)
            if pong is not None and not pong.done():
                pong.set_result(None)
            return
        exited = self._jobs.pop(message["job"], None)
        if exited is not None and not exited.done():
            exited.set_result(_status(message))

    def _restart(self) -> None:
        """A helper that died is replaced, so that one crash does not refuse every later call.
        The new one is a fresh exec, like the first: this process still never forks."""
        self._sock.close()
        self._proc.wait()
        self._audit.helper_died(self._proc.returncode, self._broken or "it exited")
        try:
            self._proc, self._sock, self.host = _launch()
        except (SpawnerError, OSError) as exc:
            self._broken = f"it died and could not be restarted: {exc}"
            self._audit.helper_restart_failed(str(exc))
            return
        self._broken = None
        if self._loop is not None:
            self._loop.add_reader(self._sock, self._on_message)
        self._audit.helper_restarted(self._proc.pid)

    def _fail_all(self, reason: str) -> None:
        self._broken = reason
        if self._loop is not None:
            self._loop.remove_reader(self._sock)
        for exited in self._jobs.values():
            if not exited.done():
                exited.set_result(_status({"error": f"the sandbox helper is gone: {reason}"}))
        self._jobs.clear()

    def close(self) -> None:
        """Stop the helper; it kills every job it still has."""
        if self._loop is not None and self._broken is None:
            self._loop.remove_reader(self._sock)
        self._sock.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()


def _launch() -> tuple[subprocess.Popen[bytes], socket.socket, HostSupport]:
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
    return proc, ours, HostSupport.from_probe(message["host"])


_RLIMITS = (("RLIMIT_CPU", "cpu_time"), ("RLIMIT_FSIZE", "file_size"),
            ("RLIMIT_NOFILE", "open_files"), ("RLIMIT_AS", "address_space"))


def job_spec(plan: CommandPlan, landlock_abi: int, layers: Layers) -> dict[str, Any]:
    """What the helper needs to run ``plan`` under ``layers``."""
    c = plan.confinement
    rlimits: dict[str, int] = {"RLIMIT_CORE": 0}
    for name, key in _RLIMITS:
        value = getattr(c, key)
        if value is not None:
            rlimits[name] = int(value + 0.999) if key == "cpu_time" else int(value)
    return {
        "executable": plan.executable, "argv": list(plan.argv), "env": dict(plan.env),
        "cwd": str(plan.cwd), "cwd_identity": list(plan.cwd_identity),
        "jail": str(plan.jail), "rlimits": rlimits,
        "uid": c.uid, "gid": c.gid,
        "namespaces": layers.namespaces, "network": c.network,
        "tmp_size": c.tmp_size if layers.namespaces else 0,
        "landlock": {"read": list(c.read_paths), "write": list(c.write_paths),
                     "deny_tcp": not c.network,
                     "abi": landlock_abi} if layers.landlock else None,
        "cgroup": {"pids_max": c.processes, "memory_max": c.memory} if layers.cgroup else None,
        "view": {"read": list(c.read_paths), "write": list(c.write_paths),
                 "unix_sockets": list(c.unix_sockets)} if layers.view else None,
    }
