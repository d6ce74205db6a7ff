"""A job's init: pid 1 of the job's own namespaces, and the parent of its command.

The helper clones it into fresh pid and mount namespaces (joining the helper's empty network
namespace for jobs without network), where it mounts a /proc that shows only the job, then
waits for a job spec; the helper keeps a few waiting so that a call does not pay for
namespace creation. Given a job it confines *itself* with everything a child inherits
(cgroup, private /tmp, cwd, rlimits, user, no_new_privs, Landlock), then starts the
command with posix_spawn, which is vfork-fast because no Python code has to run in the
child. It forwards signals to the command's
session, reaps every orphan, and reports the command's status. When it exits, the kernel
kills whatever is left in the namespace: setsid and double forks cannot outlive the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
from dataclasses import dataclass
from typing import Any, NoReturn

from execgate.daemon.sandbox import _landlock, _linux, _wire
from execgate.daemon.sandbox._paths import DEFAULT_READ_PATHS

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)
_DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals()
                         if s not in (signal.SIGKILL, signal.SIGSTOP) and 0 < s < 32)


def init_main(sock: socket.socket, flags: int) -> NoReturn:
    """Run as a freshly cloned job init; never returns."""
    try:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the helper
        if flags & _linux.CLONE_NEWNS:
            _linux.mount("none", "/", None, _linux.MS_REC | _linux.MS_PRIVATE, None)
            _linux.mount("proc", "/proc", "proc",
                         _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC, None)
        base = _warm_up(flags)
        spec, fds = _wire.receive(sock)  # a pooled init waits here
        if spec is None:
            os._exit(0)
        report = _run(spec, fds, flags, base)
    except BaseException as exc:
        report = {"error": f"{type(exc).__name__}: {exc}"}
    with contextlib.suppress(OSError):
        _wire.send(sock, report)
    os._exit(0)


@dataclass(frozen=True)
class _Base:
    """A Landlock ruleset with the default read paths, made while waiting for a job."""

    fd: int
    abi: int
    deny_tcp: bool


def _warm_up(flags: int) -> _Base | None:
    """Do, while waiting for a job, what every job needs: take this copy of the helper's
    copy-on-write page faults, and open the ~40 default read paths into a Landlock ruleset
    (it must be built here, after this init's own /proc is mounted)."""
    json.loads(json.dumps({"warm": [1, 2.0, "x", None, True], "up": {}}))
    for sig in FORWARDED:
        signal.getsignal(sig)
    resource.getrlimit(resource.RLIMIT_CORE)
    abi = _landlock.abi_version()
    if abi < 1:
        return None
    deny_tcp = bool(flags & _linux.CLONE_NEWNET)
    fd = _landlock.create(abi, deny_tcp)
    _landlock.allow(fd, DEFAULT_READ_PATHS, _landlock.READ, abi)
    return _Base(fd, abi, deny_tcp)


def _ruleset(rules: dict[str, Any], base: _Base | None) -> int:
    """The job's ruleset: the waiting base plus the job's own paths when the job uses the
    default read paths, else one built from scratch."""
    if (base is not None and rules["read"] == list(DEFAULT_READ_PATHS)
            and (rules["abi"], rules["deny_tcp"]) == (base.abi, base.deny_tcp)):
        _landlock.allow(base.fd, rules["write"], _landlock.READ | _landlock.WRITE, base.abi)
        return base.fd
    return _landlock.prepare(_landlock.Ruleset(
        read=tuple(rules["read"]), write=tuple(rules["write"]), deny_tcp=rules["deny_tcp"]),
        rules["abi"])


def _confine(spec: dict[str, Any], flags: int, base: _Base | None) -> None:
    for procs in spec["cgroups"]:
        with open(procs, "w") as f:
            f.write("0")  # this process; the command and its children follow
    if flags & _linux.CLONE_NEWNS and spec["tmp_dir"]:
        _linux.mount("tmpfs", spec["tmp_dir"], "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                     f"size={spec['tmp_size']},mode=1777")
    os.chdir(spec["cwd"])
    # Opened now, as the init's own user: the jail may sit below a directory the job's user
    # cannot traverse.
    ruleset = _ruleset(spec["landlock"], base) if spec["landlock"] else None
    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    if spec["uid"] is not None:
        os.setgroups([])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if ruleset is not None:
        _landlock.enforce(ruleset)


def _run(spec: dict[str, Any], fds: list[int], flags: int, base: _Base | None,
         ) -> dict[str, Any]:
    stdin, stdout, stderr = fds
    _confine(spec, flags, base)
    try:
        pid = os.posix_spawn(
            spec["executable"], spec["argv"], spec["env"],
            file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                          (os.POSIX_SPAWN_DUP2, stderr, 2)],
            setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    except OSError as exc:
        os.write(stderr, f"execgate: cannot execute {spec['executable']}: "
                         f"{exc.strerror}\n".encode())
        return {"status": (127 if exc.errno == 2 else 126) << 8, "rusage": [0, 0, 0]}
    finally:
        for fd in (stdin, stdout, stderr):
            os.close(fd)

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        reaped, status, usage = os.wait4(-1, 0)
        if reaped == pid:
            break
    if not flags & _linux.CLONE_NEWPID:
        with contextlib.suppress(OSError):  # no namespace to end: end the session at least
            os.killpg(pid, signal.SIGKILL)
    return {"status": status,
            "rusage": [usage.ru_utime, usage.ru_stime, usage.ru_maxrss * 1024]}
