"""The sandbox helper: the only process that creates job processes.

Why a helper: the daemon runs gRPC's threads, so it must never fork with Python code to run
in the child (gRPC's fork_support.md), and Landlock, no_new_privs and namespaces apply to
the thread or process that sets them up. The helper is started with a plain exec before the
gRPC server exists, stays single-threaded, and so may fork freely. Of the ways measured on
this host (DESIGN.md), it is the only one that can apply every layer at about the cost of a
plain spawn: a fresh interpreter per call costs 13 ms, exec wrappers have no Landlock.

It is not on a job's path: it makes inits (see ``_init``) ahead of need, each already pid 1
of fresh namespaces, in its job cgroups, with the job's view, private /tmp and Landlock
ruleset prepared for the kind of job the daemon asked for, and hands each init's socket and
a pidfd of it to the daemon, which gives the init its job and hears its report directly.
The helper reaps the inits, and removes their cgroups, as they exit. An unprivileged helper
first enters a user namespace of its own (its uid mapped to itself), which gives it the
right to create the others.

Messages (``_protocol``): from the daemon ``Want``, ``Forget`` and ``Ping``; to it
``Ready``, ``Offer`` (or a refusal, when an init cannot be made) and ``Pong`` (the
daemon's watchdog: a wedged helper stops the service's).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import os
import selectors
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, cast

from execgate.daemon.sandbox import _cgroups, _landlock, _linux, _wire
from execgate.daemon.sandbox._cgroup_files import Limits
from execgate.daemon.sandbox._init import init_main
from execgate.daemon.sandbox._paths import DEFAULT_READ_PATHS
from execgate.daemon.sandbox._protocol import Kind, Offer, Pong, Ready, Refused, View, Want

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
    """An init this helper made (and must reap)."""

    pid: int
    sock: socket.socket
    """The helper's end, until it is handed to the daemon."""
    cgroups: int = 0
    """The id of its job cgroups (with ``JobCgroups``); 0: none."""
    pidfd: int = -1
    """Readable once the init has exited."""


_PROBE_KIND = Kind(flags=0, tmp_dir="/tmp", tmp_size=1 << 20, landlock=None, cgroup=None,
                   view=View(read=list(DEFAULT_READ_PATHS), write=[], unix_sockets=[]),
                   jail=None, rlimits={}, uid=None, gid=None)


def start_init(flags: int, view_root: str, kind: Kind | None = None,
               netns: int | None = None, cgroups: list[str] | None = None) -> Init:
    """Clone a new init with ``flags``; it prepares ``kind`` of job, then waits for its spec.

    With CLONE_NEWNET in ``flags`` and a shared empty network namespace ``netns``, the init
    joins that one instead of paying for a new one per job. A view is built on
    ``view_root``, an empty directory each init's mount namespace covers. The init joins
    the job cgroups whose ``cgroup.procs`` files ``cgroups`` names while it waits.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    clone_flags = flags & ~_linux.CLONE_NEWNET if netns is not None else flags
    # Opened here: in a new pid namespace the init cannot name its parent's pid.
    helper = os.pidfd_open(os.getpid())
    try:
        pid = clone(clone_flags)
    except BaseException:
        for fd in (helper, ours.detach(), theirs.detach()):
            os.close(fd)
        raise
    if pid == 0:
        if netns is not None and flags & _linux.CLONE_NEWNET:
            _linux.setns(netns, _linux.CLONE_NEWNET)
        # Only its socket and a pidfd of this helper (to learn of its death) stay open.
        keep = sorted((theirs.fileno(), helper))
        os.closerange(0, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 20)
        null = os.open("/dev/null", os.O_RDWR)  # takes 0: received fds never land on 0-2
        os.dup2(null, 1)
        os.dup2(null, 2)
        init_main(theirs, flags, view_root, kind, cgroups or [], helper)
    os.close(helper)
    theirs.close()
    return Init(pid=pid, sock=ours)


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
        self._selector = selectors.DefaultSelector()
        self._selector.register(daemon, selectors.EVENT_READ, None)
        self._kinds: dict[str, Kind] = {}
        self._owed: dict[str, int] = {}
        """Inits the daemon wants and has not been offered yet, by kind."""
        self._urgent: list[str] = []
        """Kinds a job is waiting for: made at once, not when quiet."""
        self._inits: dict[int, Init] = {}
        self._cgroups = _cgroups.JobCgroups(host["cgroup"])
        self._cgroup_ids = itertools.count(1)
        self._netns = empty_network_namespace() if host["namespaces"] is None else None
        # An empty directory each init's mount namespace covers: the root of a job's view,
        # or (without a view) its private tmpfs when its jail lives under /tmp.
        self._mountpoint = mountpoint

    def run(self) -> None:
        """Serve the daemon until it goes away, then end every init and clean up."""
        try:
            while True:
                owed = next((key for key, n in self._owed.items() if n > 0), None)
                timeout = (QUIET_BEFORE_REFILL if owed is not None else
                           0.05 if self._cgroups.pending else None)
                events = self._selector.select(timeout)
                for key, _ in events:
                    if key.data is None:
                        if not self._from_daemon():
                            return
                    else:
                        self._reap(key.data)
                while self._urgent:
                    self._offer(self._urgent.pop(0), urgent=True)
                if not events:
                    # Idle: only now make spare inits, so that no running job waits behind
                    # a clone on its CPU.
                    if owed is not None:
                        self._owed[owed] -= 1
                        self._offer(owed, urgent=False)
                    self._cgroups.retry()
        finally:
            self._shutdown()

    def _from_daemon(self) -> bool:
        message, _ = _wire.receive(self._daemon)
        if message is None:
            return False
        if message["op"] == "want":
            want = cast(Want, message)
            if want["kind"] is not None:
                self._kinds[want["key"]] = want["kind"]
            if want["urgent"]:
                self._urgent.append(want["key"])
            else:
                self._owed[want["key"]] = self._owed.get(want["key"], 0) + want["count"]
        elif message["op"] == "forget":
            self._kinds.pop(message["key"], None)
            self._owed.pop(message["key"], None)
        elif message["op"] == "ping":
            _wire.send(self._daemon, Pong(op="pong", id=message["id"]))
        return True

    def _offer(self, key: str, urgent: bool) -> None:
        """Make an init of ``key``'s kind, in its job cgroups, and hand it to the daemon."""
        kind = self._kinds.get(key)
        if kind is None:  # forgotten meanwhile; a job waiting for it must not wait forever
            if urgent:
                _wire.send(self._daemon, Refused(op="refused", key=key,
                                                 error="could not start the job: its kind "
                                                       "of job was forgotten"))
            return
        cgroups = next(self._cgroup_ids)
        try:
            procs = self._cgroups.create(cgroups, cast(Limits | None, kind["cgroup"]))
            try:
                init = start_init(kind["flags"], self._mountpoint, kind, self._netns, procs)
            except OSError:
                self._cgroups.remove(cgroups)
                raise
        except OSError as exc:
            if urgent:  # a job waits for it: it is told why it cannot start
                _wire.send(self._daemon, Refused(op="refused", key=key,
                                                 error=f"could not start the job: {exc}"))
            else:
                self._owed.pop(key, None)  # the next job of this kind will try again
            return
        init.cgroups = cgroups
        init.pidfd = os.pidfd_open(init.pid)
        self._inits[init.pid] = init
        self._selector.register(init.pidfd, selectors.EVENT_READ, init)
        offer = Offer(op="init", key=key, pid=init.pid,
                      counters=self._cgroups.counters(cgroups))
        try:
            _wire.send(self._daemon, offer, [init.sock.fileno(), init.pidfd])
        finally:
            init.sock.close()  # the daemon's now; without a daemon the init exits

    def _reap(self, init: Init) -> None:
        """An init exited: reap it, and give its cgroups back."""
        self._selector.unregister(init.pidfd)
        os.close(init.pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(init.pid, 0)
        del self._inits[init.pid]
        self._cgroups.remove(init.cgroups)

    def _shutdown(self) -> None:
        for init in self._inits.values():  # killing an init ends its whole pid namespace
            with contextlib.suppress(OSError):
                os.kill(init.pid, signal.SIGKILL)
        for init in list(self._inits.values()):
            self._reap(init)
        self._cgroups.close()
        with contextlib.suppress(OSError):
            os.rmdir(self._mountpoint)


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
    _wire.send(daemon, Ready(op="ready", host=host, mountpoint=mountpoint))
    Helper(daemon, host, mountpoint).run()


if __name__ == "__main__":
    main()
