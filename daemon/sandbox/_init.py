"""A job's init: pid 1 of the job's own namespaces, and the parent of its command.

The helper clones it into fresh pid and mount namespaces (joining the helper's empty network
namespace for jobs without network), where it mounts a /proc that shows only the job, then
waits for a job spec; the helper keeps a few waiting so that a call does not pay for
namespace creation. While it waits it also does everything that depends only on the kind of
job it was made for (its tool's paths): the private /tmp, the job's filesystem view
(``_view``), entered with pivot_root, and the whole Landlock ruleset. Given a job it confines
*itself* with the rest of what a child inherits (cgroup, rlimits, user, cwd, no_new_privs,
Landlock), then starts the
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
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import NoReturn, cast

from execgate.daemon.sandbox import _landlock, _linux, _view, _wire
from execgate.daemon.sandbox._protocol import JobSpec, Kind, Report

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)
_DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals()
                         if s not in (signal.SIGKILL, signal.SIGSTOP) and 0 < s < 32)


_EARLY: list[int] = []
"""Signals for the command that came before it existed: forwarded once it does."""


def _held(sig: int, _frame: object) -> None:
    _EARLY.append(sig)


class JobRefused(Exception):
    """The job cannot be set up as its spec says; the message is for the caller."""


def init_main(sock: socket.socket, flags: int, view_root: str, kind: Kind | None,
              cgroups: list[str], helper: int) -> NoReturn:
    """Run as a freshly cloned job init; never returns.

    ``kind`` is what every job this init may run shares: it is prepared now,
    a view built on ``view_root`` (an empty directory) when it has one, and the job cgroups
    whose ``cgroup.procs`` files ``cgroups`` names are joined. ``helper`` is a pidfd of the
    helper, this init's parent, which it must not outlive. An init that cannot
    warm up says why and exits 1, which is how the helper's probe learns what this host
    lacks.
    """
    try:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the helper
        for sig in FORWARDED:  # the helper ignores some; a job's signals must not be lost
            signal.signal(sig, _held)
        if flags & _linux.CLONE_NEWNS:
            _linux.mount("none", "/", None, _linux.MS_REC | _linux.MS_PRIVATE, None)
            _linux.mount("proc", "/proc", "proc",
                         _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC, None)
        ready = _prepare(flags, view_root, kind, cgroups)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _wire.send(sock, {"error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    report: Report
    try:
        spec, fds = _wire.receive(sock)  # a pooled init waits here, for the daemon
        if spec is None:
            os._exit(0)
        report = _run(cast(JobSpec, spec), fds, flags, ready, helper)
    except JobRefused as exc:
        report = {"error": str(exc)}
    except BaseException as exc:
        report = {"error": f"{type(exc).__name__}: {exc}"}
    with contextlib.suppress(OSError):
        _wire.send(sock, report)
    os._exit(0)


@dataclass(frozen=True)
class _Ready:
    """What a waiting init prepared for its kind of job."""

    ruleset: int | None
    """The job's whole Landlock ruleset, or None when the layer is off."""


def _prepare(flags: int, view_root: str, kind: Kind | None, cgroups: list[str]) -> _Ready:
    """Do, while waiting, what every job of this kind needs: take this copy of the helper's
    copy-on-write page faults, mount the private /tmp or build and enter the view, open the
    Landlock ruleset's paths (after this init's own /proc and view exist), and join the job
    cgroups (last, so that none of this is charged to the job)."""
    json.loads(json.dumps({"warm": [1, 2.0, "x", None, True], "up": {}}))
    for sig in FORWARDED:
        signal.getsignal(sig)
    resource.getrlimit(resource.RLIMIT_CORE)
    if kind is None:  # a probe of namespaces alone
        return _Ready(None)
    procs = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cgroups]  # host paths
    if kind["view"] is not None:
        view = kind["view"]
        _view.build(view_root, view["read"], view["write"], view["unix_sockets"],
                    kind["tmp_size"])
    elif flags & _linux.CLONE_NEWNS and kind["tmp_dir"]:
        _linux.mount("tmpfs", kind["tmp_dir"], "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                     f"size={kind['tmp_size']},mode=1777")
    rules = kind["landlock"]
    ruleset = _landlock.prepare(_landlock.Ruleset(
        read=tuple(rules["read"]), write=tuple(rules["write"]), deny_tcp=rules["deny_tcp"]),
        rules["abi"]) if rules else None
    if kind["view"] is not None:
        _view.leave_host()  # from now on only the view exists for this init and its job
    for fd in procs:
        os.write(fd, b"0")  # this process; the command and its children follow
        os.close(fd)
    return _Ready(ruleset)


def _confine(spec: JobSpec, ready: _Ready, helper: int) -> None:
    # Opened now, as the init's own user: the jail may sit below a directory the job's user
    # cannot traverse. Entered only after the user changes, so that the kernel checks the
    # job's right to enter it.
    cwd = _open_cwd(spec)
    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    uid, gid = spec["uid"], spec["gid"]
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _rearm_death_signal(helper)
    try:
        os.fchdir(cwd)
    except OSError as exc:
        raise JobRefused(f"the command's user cannot enter its working directory: "
                         f"{exc.strerror}") from None
    finally:
        os.close(cwd)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if ready.ruleset is not None:
        _landlock.enforce(ready.ruleset)


def _open_cwd(spec: JobSpec) -> int:
    """The working directory the policy checked, or JobRefused.

    It is found again beneath the jail with no symlink followed (the policy's answer is a
    real path), and must be the very directory the policy saw: a directory swapped for a
    symlink or for another directory between the check and now is refused, not entered.
    """
    relative = os.path.relpath(spec["cwd"], spec["jail"])
    jail = os.open(spec["jail"], _linux.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        cwd = _linux.openat2(jail, relative, _linux.O_PATH | os.O_DIRECTORY,
                             _linux.RESOLVE_BENEATH | _linux.RESOLVE_NO_SYMLINKS
                             | _linux.RESOLVE_NO_MAGICLINKS)
    except OSError:
        cwd = -1
    finally:
        os.close(jail)
    if cwd >= 0:
        st = os.fstat(cwd)
        if [st.st_dev, st.st_ino] == list(spec["cwd_identity"]):
            return cwd
        os.close(cwd)
    raise JobRefused("the working directory changed after the policy checked it; "
                     "nothing ran")


def _rearm_death_signal(helper: int) -> None:
    """The kernel clears the death signal when a process's credentials change: set it again,
    then make sure the helper did not die in between (its pidfd turns readable), so that a
    killed daemon never leaves this job running."""
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    poller = select.poll()
    poller.register(helper, select.POLLIN)
    if poller.poll(0):
        os._exit(1)


def _run(spec: JobSpec, fds: list[int], flags: int, ready: _Ready, helper: int) -> Report:
    stdin, stdout, stderr = fds
    _confine(spec, ready, helper)
    if not flags & _linux.CLONE_NEWPID:
        # No pid namespace to end with the job: whatever the command leaves behind (setsid,
        # double forks) is re-parented to this init instead of the host's, and ended below.
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
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
    for early in _EARLY:
        forward(early, None)
    while True:
        reaped, status, usage = os.wait4(-1, 0)
        if reaped == pid:
            break
    if not flags & _linux.CLONE_NEWPID:
        _end_descendants(pid)
    return {"status": status,
            "rusage": [usage.ru_utime, usage.ru_stime, usage.ru_maxrss * 1024]}


def _end_descendants(session: int) -> None:
    """Kill and reap every process the command left (this init is their subreaper), so that
    none outlives the job even without a pid namespace; bounded, like the job itself."""
    with contextlib.suppress(OSError):
        os.killpg(session, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        children = _children()
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        if not children:
            time.sleep(0.001)  # a child being re-parented right now shows in a moment


def _children() -> list[int]:
    """This process's children, from every thread's list (Linux 3.5+)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids
