"""The sandbox helper: the only process that creates job processes.

Why a helper: the daemon runs gRPC's threads, so it must never fork with Python code to run
in the child (gRPC's fork_support.md), and Landlock, no_new_privs and namespaces apply to
the thread or process that sets them up. The helper is started with a plain exec before the
gRPC server exists, stays single-threaded, and so may fork freely. Of the ways measured on
this host (DESIGN.md), it is the only one that can apply every layer at about the cost of a
plain spawn: a fresh interpreter per call costs 13 ms, exec wrappers have no Landlock.

Per call it hands the job to a waiting init (see ``_init``), already pid 1 of fresh
namespaces, and makes a replacement after answering. An unprivileged helper first enters a
user namespace of its own (its uid mapped to itself), which gives it the right to create
the others.

Protocol (``_wire``), daemon to helper: ``spawn`` (a job spec, with stdin/stdout/stderr) and
``signal`` and ``ping``; helper to daemon: ``ready`` (what this host supports), ``exited``
per job and ``pong`` per ping (the daemon's watchdog: a wedged helper stops the service's).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from execgate.daemon.sandbox import _cgroups, _landlock, _linux, _wire
from execgate.daemon.sandbox._init import init_main, job_kind
from execgate.daemon.sandbox._paths import DEFAULT_READ_PATHS

POOL_SIZE = 2
"""Waiting inits per kind of job: enough for a burst to start without namespace creation."""
QUIET_BEFORE_REFILL = 0.003
"""Seconds without messages before spare inits are made. A clone started right after a
dispatch delays the woken init behind it on the same CPU by ~2 ms (measured here), so
spares are made when nothing is starting."""

_NR_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220, "ppc64le": 120, "s390x": 120}
_pylib = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across clone
_pylib.syscall.restype = ctypes.c_long


def clone(flags: int) -> int:
    """fork(), but into new namespaces: the child of CLONE_NEWPID is pid 1 of its own.

    Safe only in a single-threaded process, which the helper is; Python's own fork hooks
    run around it exactly as ``os.fork`` runs them.
    """
    number = _NR_CLONE.get(os.uname().machine)
    if number is None:
        raise OSError(f"clone: unsupported machine {os.uname().machine}")
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _pylib.syscall(ctypes.c_long(number), ctypes.c_ulong(flags | signal.SIGCHLD),
                         ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                         ctypes.c_ulong(0))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    errno = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(errno, f"clone: {os.strerror(errno)}")
    return int(pid)


@dataclass
class Init:
    """A job init, waiting for a spec or running one."""

    pid: int
    sock: socket.socket
    flags: int
    cgroups: int = 0
    """The id of its job cgroups (with ``JobCgroups``); 0: none."""


PoolKey = tuple[int, str]
"""What a waiting init was made for: its clone flags, and its kind of job (``job_kind``, as
canonical JSON): in effect, one pool per tool."""
MAX_KINDS = 8
"""Pools kept at once; the least recently used kind's inits go first."""
_PROBE_KIND = {"tmp_dir": "/tmp", "tmp_size": 1 << 20, "landlock": None,
               "view": {"read": list(DEFAULT_READ_PATHS), "write": [], "unix_sockets": []}}


@dataclass
class Job:
    """A job handed to an init."""

    id: int
    init: Init


def start_init(flags: int, view_root: str, kind: dict[str, Any] | None = None,
               netns: int | None = None, cgroups: list[str] | None = None) -> Init:
    """Clone a new init with ``flags``; it prepares ``kind`` of job, then waits for its spec.

    With CLONE_NEWNET in ``flags`` and a shared empty network namespace ``netns``, the init
    joins that one instead of paying for a new one per job. A view is built on
    ``view_root``, an empty directory each init's mount namespace covers. The init joins
    the job cgroups whose ``cgroup.procs`` files ``cgroups`` names while it waits.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    clone_flags = flags & ~_linux.CLONE_NEWNET if netns is not None else flags
    pid = clone(clone_flags)
    if pid == 0:
        if netns is not None and flags & _linux.CLONE_NEWNET:
            _linux.setns(netns, _linux.CLONE_NEWNET)
        keep = theirs.fileno()
        os.closerange(0, keep)
        os.closerange(keep + 1, 1 << 20)
        null = os.open("/dev/null", os.O_RDWR)  # takes 0: received fds never land on 0-2
        os.dup2(null, 1)
        os.dup2(null, 2)
        init_main(theirs, flags, view_root, kind, cgroups or [])
    theirs.close()
    return Init(pid=pid, sock=ours, flags=flags)


def empty_network_namespace() -> int | None:
    """An fd on a network namespace with nothing in it but a down loopback, or None.

    Shared by every job without network: there is no interface to talk over, and Landlock's
    scoping keeps jobs off each other's abstract unix sockets.
    """
    ready_r, ready_w = os.pipe()
    pid = clone(_linux.CLONE_NEWNET)
    if pid == 0:
        os.close(ready_w)
        os.read(ready_r, 1)  # hold the namespace until the parent has its fd
        os._exit(0)
    os.close(ready_r)
    try:
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(ready_w)
        os.waitpid(pid, 0)


def _enter_user_namespace() -> None:
    uid, gid = os.geteuid(), os.getegid()
    _linux.unshare(_linux.CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def probe(in_userns: bool, userns_error: str | None, mountpoint: str) -> dict[str, Any]:
    """What this host supports, each layer with the reason when it does not."""
    host: dict[str, Any] = {"root": os.geteuid() == 0 and not in_userns,
                            "landlock_abi": _landlock.abi_version(),
                            "user_namespace": userns_error}
    host["landlock"] = None if host["landlock_abi"] >= 1 else (
        "the kernel has no Landlock (or it is disabled)")
    flags = _linux.CLONE_NEWPID | _linux.CLONE_NEWNS | _linux.CLONE_NEWNET
    try:
        init = start_init(flags, mountpoint)
        init.sock.close()  # end of stream: the probe init exits 0 after its mounts
        _, status = os.waitpid(init.pid, 0)
        host["namespaces"] = None if status == 0 else f"a probe init failed (status {status})"
    except OSError as exc:
        host["namespaces"] = f"cannot create pid/mount/network namespaces: {exc}"
    host["view"] = (_probe_view(flags, mountpoint) if host["namespaces"] is None
                    else "needs pid and mount namespaces")
    host["cgroup"] = _cgroups.probe()
    return host


def _probe_view(flags: int, mountpoint: str) -> str | None:
    """None when an init can build a job's filesystem view here, else why not."""
    try:
        init = start_init(flags & ~_linux.CLONE_NEWNET, mountpoint, _PROBE_KIND)
    except OSError as exc:
        return f"cannot start a probe init: {exc}"
    report = None
    try:
        init.sock.shutdown(socket.SHUT_WR)  # no job: a healthy init exits 0 after warming up
        _, status = os.waitpid(init.pid, 0)
        if status != 0:
            init.sock.setblocking(False)
            with contextlib.suppress(OSError):
                report, _ = _wire.receive(init.sock)
    finally:
        init.sock.close()
    if status == 0:
        return None
    detail = report.get("error") if report else f"status {status}"
    return f"cannot build a job's own root (mount, pivot_root): {detail}"


class Helper:
    """The helper's single-threaded loop."""

    def __init__(self, daemon: socket.socket, host: dict[str, Any], mountpoint: str) -> None:
        self._daemon = daemon
        self._host = host
        self._selector = selectors.DefaultSelector()
        self._selector.register(daemon, selectors.EVENT_READ, None)
        self._jobs: dict[int, Job] = {}
        self._pool: dict[PoolKey, list[Init]] = {}
        self._cgroups = _cgroups.JobCgroups(host["cgroup"])
        self._cgroup_ids = itertools.count(1)
        self._exiting: list[int] = []
        """Inits that reported and are exiting; reaped when idle, their pids held till then."""
        self._netns = empty_network_namespace() if host["namespaces"] is None else None
        # An empty directory each job's mount namespace covers: the root of a job's view, or
        # (without a view) its private tmpfs when its jail lives under /tmp (a tmpfs on /tmp
        # would hide the jail).
        self._mountpoint = mountpoint

    def run(self) -> None:
        """Serve the daemon until it goes away, then end every job and clean up."""
        try:
            while True:
                short = self._pool_short()
                timeout = (QUIET_BEFORE_REFILL if short is not None else
                           0.05 if self._cgroups.pending or self._exiting else None)
                events = self._selector.select(timeout)
                for key, _ in events:
                    if key.data is None:
                        if not self._from_daemon():
                            return
                    else:
                        self._from_init(key.data)
                if not events:
                    # Idle: only now make spare inits, so that no report waits behind a clone.
                    self._reap()
                    if short is not None:
                        self._refill(short)
                    self._cgroups.retry()
        finally:
            self._shutdown()

    def _pool_short(self) -> PoolKey | None:
        """A pool below its size, if any."""
        for key, pool in self._pool.items():
            if len(pool) < POOL_SIZE:
                return key
        return None

    def _start(self, key: PoolKey) -> Init:
        """A new init for ``key``, in job cgroups with the kind's limits already set: a job
        neither waits for cgroup writes nor moves between cgroups."""
        flags, kind = key
        prepared = json.loads(kind)
        cgroups = next(self._cgroup_ids)
        procs = self._cgroups.create(cgroups, prepared["cgroup"])
        try:
            init = start_init(flags, self._mountpoint, prepared, self._netns, procs)
        except OSError:
            self._cgroups.remove(cgroups)
            raise
        init.cgroups = cgroups
        return init

    def _use(self, key: PoolKey) -> list[Init]:
        """The pool of ``key``, now the most recently used; beyond MAX_KINDS the least
        recently used pool's inits are ended (a policy with many tools keeps working, the
        rarely used ones cold)."""
        pool = self._pool.pop(key, [])
        self._pool[key] = pool
        while len(self._pool) > MAX_KINDS:
            for init in self._pool.pop(next(iter(self._pool))):
                init.sock.close()  # end of stream: a waiting init exits by itself
                self._exiting.append(init.pid)
                self._cgroups.remove(init.cgroups)
        return pool

    def _refill(self, key: PoolKey) -> None:
        try:
            self._pool[key].append(self._start(key))
        except OSError:
            self._pool.pop(key)  # cannot make these now; the next call will try again

    def _shutdown(self) -> None:
        inits = [job.init for job in self._jobs.values()]
        inits += [init for pool in self._pool.values() for init in pool]
        for init in inits:  # killing an init ends its whole pid namespace
            with contextlib.suppress(OSError):
                os.kill(init.pid, signal.SIGKILL)
        for pid in [init.pid for init in inits] + self._exiting:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        for init in inits:
            self._cgroups.remove(init.cgroups)
        self._cgroups.close()
        with contextlib.suppress(OSError):
            os.rmdir(self._mountpoint)

    def _from_daemon(self) -> bool:
        message, fds = _wire.receive(self._daemon)
        if message is None:
            return False
        if message["op"] == "spawn":
            self._spawn(message, fds)
        elif message["op"] == "signal":
            job = self._jobs.get(message["job"])
            if job is not None:  # unreaped, so the pid is still this job's init
                with contextlib.suppress(OSError):
                    os.kill(job.init.pid, message["signal"])
        elif message["op"] == "ping":
            _wire.send(self._daemon, {"op": "pong", "id": message["id"]})
        return True

    def _pool_key(self, spec: dict[str, Any]) -> PoolKey:
        kind = json.dumps(job_kind(spec), sort_keys=True, separators=(",", ":"))
        if not spec["namespaces"]:
            return 0, kind
        flags = _linux.CLONE_NEWPID | _linux.CLONE_NEWNS
        return flags if spec["network"] else flags | _linux.CLONE_NEWNET, kind

    def _private_tmp(self, spec: dict[str, Any]) -> None:
        """Give the job a private tmpfs, and tell it where (TMPDIR, Landlock)."""
        spec["tmp_dir"] = None
        if not (spec["namespaces"] and spec["tmp_size"]):
            return
        jail_in_tmp = spec["jail"] == "/tmp" or spec["jail"].startswith("/tmp/")
        # In a view, /tmp is the job's own whatever the jail: the jail is bound onto it.
        spec["tmp_dir"] = self._mountpoint if jail_in_tmp and not spec["view"] else "/tmp"
        spec["env"]["TMPDIR"] = spec["tmp_dir"]
        if spec["landlock"]:
            spec["landlock"]["write"].append(spec["tmp_dir"])
            if spec["view"]:
                spec["landlock"]["write"].append("/dev/shm")

    def _spawn(self, spec: dict[str, Any], fds: list[int]) -> None:
        job_id = spec["job"]
        self._private_tmp(spec)
        init = None
        try:
            key = self._pool_key(spec)
            pool = self._use(key)
            init = pool.pop() if pool else self._start(key)
            _wire.send(init.sock, spec, fds)
        except OSError as exc:
            if init is not None:  # it cannot take the job: end it, with its cgroups
                init.sock.close()
                self._exiting.append(init.pid)
                self._cgroups.remove(init.cgroups)
            _wire.send(self._daemon, {"op": "exited", "job": job_id,
                                      "error": f"could not start the job: {exc}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        self._jobs[job_id] = Job(job_id, init)
        self._selector.register(init.sock, selectors.EVENT_READ, job_id)

    def _from_init(self, job_id: int) -> None:
        job = self._jobs.pop(job_id)
        try:
            report, _ = _wire.receive(job.init.sock)
        except (OSError, ValueError):
            report = None
        self._selector.unregister(job.init.sock)
        job.init.sock.close()
        message: dict[str, Any] = {"op": "exited", "job": job_id,
                                   **self._cgroups.events(job.init.cgroups)}
        if report is None:  # the init was killed (SIGKILL ends the whole job)
            _, init_status = os.waitpid(job.init.pid, 0)
            message.update(status=init_status, rusage=[0, 0, 0])
        else:
            message.update(report)
            self._exiting.append(job.init.pid)  # reaped when idle: teardown takes ~0.5 ms
        _wire.send(self._daemon, message)
        self._cgroups.remove(job.init.cgroups)  # after the report: the caller need not wait

    def _reap(self) -> None:
        still = []
        for pid in self._exiting:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                still.append(pid)
        self._exiting = still


def main() -> None:
    """Entry point: ``python -m execgate.daemon.sandbox._helper FD DAEMON_PID``."""
    daemon = socket.socket(fileno=int(sys.argv[1]))
    # The daemon decides when we stop: a signal to its whole process group (Ctrl-C, a
    # service manager's SIGTERM) must reach its jobs through it, as DAEMON_STOPPING.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    userns_error, in_userns = None, False
    if os.geteuid() != 0:
        try:
            _enter_user_namespace()
            in_userns = True
        except OSError as exc:
            userns_error = f"cannot create a user namespace: {exc}"
    # Armed after the user namespace: a change of credentials clears the death signal. Then
    # the parent is checked, since it may have died before the signal was armed.
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(sys.argv[2]):
        return  # the daemon is already gone
    # The cyclic GC would walk (and so copy) the whole heap in every cloned init; the
    # helper's own objects are acyclic, so it is frozen and switched off.
    gc.collect()
    gc.freeze()
    gc.disable()
    mountpoint = tempfile.mkdtemp(prefix="execgate-mnt-")
    host = probe(in_userns, userns_error, mountpoint)
    _wire.send(daemon, {"op": "ready", "host": host})
    Helper(daemon, host, mountpoint).run()


if __name__ == "__main__":
    main()
