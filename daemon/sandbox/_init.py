"""A job's init: pid 1 of a job's own namespaces, and the parent of its commands.

The helper clones it into fresh pid and mount namespaces (joining the helper's empty network
namespace for jobs without network), where it mounts a /proc that shows only its jobs. While
it waits for its first job it does everything that depends only on the kind of job it was
made for (its tool): the private /tmp, the job's filesystem view (``_view``), entered with
pivot_root, the job cgroups, and then it confines *itself* exactly as its jobs are to be
confined (rlimits, user, no_new_privs, Landlock), since a child inherits all of it. A job is
then only a working directory and a ``posix_spawn`` (vfork-fast: no Python runs in the
child). It forwards the daemon's signals to the command's session, reaps every orphan, and
reports the command's status.

An init runs the jobs of its kind one after another (up to ``MAX_JOBS``, for at most
``MAX_SECONDS``), which is what makes a short command cheap: nothing is cloned, mounted or
enforced per call. It takes another job only when what it gave the last one is as it was:
every process of the job is gone, its private /tmp and /dev/shm are as its view built them
(its /dev is read-only), and nothing a job may change of its init from outside (rlimits,
CPU affinity, I/O priority, scheduling attributes) has changed; only after a job that ran
(a refused one may mean the jail was replaced on the host); and only when the jobs cannot
change its namespaces for the next one (they hold no capability in them, or it has none of
its own and they share the host's, as every such job does). SysV IPC and keyrings are the
host's for every job, reused init or not. It reports a job's exit first (nothing of the
job runs by then) and its verdict on taking another after these checks, so that the job's
caller does not wait for them. Otherwise it exits after its verdict, and the kernel ends
whatever is left in its namespaces: setsid and double forks cannot outlive the job.
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
from execgate.daemon.sandbox._protocol import JobSpec, Kind, Report, Verdict

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)
_DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals()
                         if s not in (signal.SIGKILL, signal.SIGSTOP) and 0 < s < 32)
MAX_JOBS = 4096
"""Jobs one init runs before it makes way for a fresh one."""
MAX_SECONDS = 300.0
"""Seconds an init takes jobs for: its view binds the jail and write paths as they were when
it was made, and a directory the host replaced since is seen afresh by a fresh init."""
MAX_SCRATCH_ENTRIES = 256
"""Entries in its private /tmp and /dev/shm past which an init is not cleaned up for another
job but replaced (a job that fills /tmp must not make the next one wait)."""

_COMMAND: list[int] = []
"""The running command's pid (its session), while there is one: where signals from outside
the daemon (a service manager's, to the whole cgroup) are forwarded."""


def _forward(sig: int, _frame: object) -> None:
    if _COMMAND:
        with contextlib.suppress(OSError):
            os.killpg(_COMMAND[0], sig)


class JobRefused(Exception):
    """The job cannot be set up as its spec says; the message is for the caller."""


@dataclass(frozen=True)
class _Ready:
    """What a waiting init prepared for its kind of job."""

    jail: int | None
    """An O_PATH descriptor of the jail, opened before the user changed."""
    jail_path: str
    scratch: tuple[str, ...]
    """Its private /tmp and /dev/shm: they must be as the view left them (empty, or holding
    only the directories a jail inside is mounted on) before another job runs."""
    scratch_state: frozenset[tuple[str, int, int]] | None
    reusable: bool
    """Whether the jobs are without capabilities, so that they cannot change this init's
    namespaces for the next job."""
    wake: int
    """Read end of the pipe Python's signal handling writes to (a child ended, a signal)."""


def init_main(sock: socket.socket, flags: int, view_root: str, kind: Kind | None,
              cgroups: list[str], helper: int) -> NoReturn:
    """Run as a freshly cloned job init; never returns.

    ``kind`` is what every job this init may run shares: it is prepared now, a view built
    on ``view_root`` (an empty directory) when it has one, the job cgroups whose
    ``cgroup.procs`` files ``cgroups`` names joined, and this init confined as its jobs are.
    ``helper`` is a pidfd of the helper, this init's parent, which it must not outlive. An
    init that cannot warm up says why and exits 1, which is how the helper's probe learns
    what this host lacks.
    """
    try:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the helper
        for sig in FORWARDED:  # the helper ignores some; a job's signals must not be lost
            signal.signal(sig, _forward)
        if flags & _linux.CLONE_NEWNS:
            _linux.mount("none", "/", None, _linux.MS_REC | _linux.MS_PRIVATE, None)
            _linux.mount("proc", "/proc", "proc",
                         _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC, None)
        ready = _prepare(flags, view_root, kind, cgroups, helper)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _wire.send(sock, {"error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    _serve(sock, flags, ready)


def _serve(sock: socket.socket, flags: int, ready: _Ready) -> NoReturn:
    """Run jobs as the daemon sends them, until one leaves something behind, MAX_JOBS ran,
    MAX_SECONDS passed, a job was refused, or the daemon closes the socket (a pooled init
    waits in ``_next_job``)."""
    state = _inheritable()
    born = time.monotonic()
    for jobs in range(1, MAX_JOBS + 1):
        spec, fds = _next_job(sock)
        if spec is None:
            os._exit(0)
        report: Report
        refused = False
        try:
            report = _run(spec, fds, flags, ready, sock)
        except JobRefused as exc:
            # Most likely the jail or a write path was replaced on the host since this init
            # bound them: a fresh init sees the new ones.
            report, refused = {"error": str(exc)}, True
        except BaseException as exc:
            with contextlib.suppress(OSError):
                _wire.send(sock, {"error": f"{type(exc).__name__}: {exc}"})
            os._exit(0)
        with contextlib.suppress(OSError):
            _wire.send(sock, report)
        # Nothing of the job runs any more: its caller has its exit while this init looks
        # whether the job left anything the next could see.
        verdict = Verdict(again=not refused and ready.reusable and jobs < MAX_JOBS
                          and time.monotonic() - born < MAX_SECONDS and _clean(ready)
                          and _inheritable() == state and _time_left())
        with contextlib.suppress(OSError):
            _wire.send(sock, verdict)
        if not verdict["again"]:
            break
    os._exit(0)


def _next_job(sock: socket.socket) -> tuple[JobSpec | None, list[int]]:
    """The next job and its three pipe ends; (None, []) when the daemon is done with this
    init. A signal the daemon sent for the previous job after it ended is dropped."""
    while True:
        message, fds = _wire.receive(sock)
        if message is None or "op" not in message:
            return cast(JobSpec | None, message), fds
        for fd in fds:
            os.close(fd)


def _prepare(flags: int, view_root: str, kind: Kind | None, cgroups: list[str],
             helper: int) -> _Ready:
    """Do, while waiting, what every job of this kind needs: take this copy of the helper's
    copy-on-write page faults, mount the private /tmp or build and enter the view, open the
    Landlock ruleset's paths (after this init's own /proc and view exist), join the job
    cgroups (late, so that little of this is charged to the jobs), and confine this init."""
    json.loads(json.dumps({"warm": [1, 2.0, "x", None, True], "up": {}}))
    resource.getrlimit(resource.RLIMIT_CORE)
    wake, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)  # only to wake the poll
    if kind is None:  # a probe of namespaces alone
        return _Ready(None, "/", (), frozenset(), False, wake)
    if not flags & _linux.CLONE_NEWPID:
        # No pid namespace to end with a job: whatever a command leaves behind (setsid,
        # double forks) is re-parented to this init instead of the host's, and ended.
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
    procs = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cgroups]  # host paths
    scratch: tuple[str, ...] = ()
    if kind["view"] is not None:
        view = kind["view"]
        _view.build(view_root, view["read"], view["write"], view["unix_sockets"],
                    kind["tmp_size"])
        scratch = ("/tmp", "/dev/shm")  # the view's /dev is read-only
    elif flags & _linux.CLONE_NEWNS and kind["tmp_dir"]:
        _linux.mount("tmpfs", kind["tmp_dir"], "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                     f"size={kind['tmp_size']},mode=1777")
        scratch = (kind["tmp_dir"],)
    rules = kind["landlock"]
    ruleset = _landlock.prepare(_landlock.Ruleset(
        read=tuple(rules["read"]), write=tuple(rules["write"]), deny_tcp=rules["deny_tcp"]),
        rules["abi"]) if rules else None
    if kind["view"] is not None:
        _view.leave_host()  # from now on only the view exists for this init and its jobs
    # Opened now, as the init's own user: the jail may sit below a directory the jobs' user
    # cannot traverse. Each job's cwd is entered only after the user changes, so that the
    # kernel checks the job's right to enter it.
    jail = (os.open(kind["jail"], _linux.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            if kind["jail"] is not None else None)
    for fd in procs:
        os.write(fd, b"0")  # this process; the commands and their children follow
        os.close(fd)
    _confine(kind, ruleset, helper)
    reusable = os.geteuid() != 0 or not flags & _linux.CLONE_NEWNS
    return _Ready(jail, kind["jail"] or "/", scratch, _entries(scratch), reusable, wake)


def _confine(kind: Kind, ruleset: int | None, helper: int) -> None:
    """Confine this init as its jobs are to be: they inherit all of it."""
    for name, value in kind["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    uid, gid = kind["uid"], kind["gid"]
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _rearm_death_signal(helper)
    # The jobs share this init's user: they must not be able to trace it (and so reach the
    # next job through it), whatever the host's suid_dumpable says.
    _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if ruleset is not None:
        _landlock.enforce(ruleset)


def _open_cwd(spec: JobSpec, ready: _Ready) -> int:
    """The working directory the policy checked, or JobRefused.

    It is found again beneath the jail with no symlink followed (the policy's answer is a
    real path), and must be the very directory the policy saw: a directory swapped for a
    symlink or for another directory between the check and now is refused, not entered.
    """
    cwd = -1
    if ready.jail is not None:
        try:
            cwd = _linux.openat2(ready.jail, os.path.relpath(spec["cwd"], ready.jail_path),
                                 _linux.O_PATH | os.O_DIRECTORY,
                                 _linux.RESOLVE_BENEATH | _linux.RESOLVE_NO_SYMLINKS
                                 | _linux.RESOLVE_NO_MAGICLINKS)
        except PermissionError:  # this init already runs as the command's user
            raise JobRefused("the command's user cannot reach its working directory") from None
        except OSError:
            pass
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
    killed daemon never leaves this init running."""
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    poller = select.poll()
    poller.register(helper, select.POLLIN)
    if poller.poll(0):
        os._exit(1)


def _run(spec: JobSpec, fds: list[int], flags: int, ready: _Ready,
         sock: socket.socket) -> Report:
    stdin, stdout, stderr = fds
    try:
        cwd = _open_cwd(spec, ready)
        try:
            os.fchdir(cwd)
        except OSError as exc:
            raise JobRefused(f"the command's user cannot enter its working directory: "
                             f"{exc.strerror}") from None
        finally:
            os.close(cwd)
        try:
            pid = os.posix_spawn(
                spec["executable"], spec["argv"], spec["env"],
                file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0),
                              (os.POSIX_SPAWN_DUP2, stdout, 1),
                              (os.POSIX_SPAWN_DUP2, stderr, 2)],
                setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
        except OSError as exc:
            os.write(stderr, f"execgate: cannot execute {spec['executable']}: "
                             f"{exc.strerror}\n".encode())
            return {"status": (127 if exc.errno == 2 else 126) << 8, "rusage": [0, 0, 0]}
    finally:
        for fd in (stdin, stdout, stderr):
            os.close(fd)
    _COMMAND.append(pid)
    try:
        status, usage = _wait(pid, sock, ready.wake)
    finally:
        _COMMAND.clear()
    _end_leftovers(pid, flags)
    return {"status": status,
            "rusage": [usage.ru_utime, usage.ru_stime, usage.ru_maxrss * 1024]}


def _wait(pid: int, sock: socket.socket, wake: int) -> tuple[int, resource.struct_rusage]:
    """Reap children until the command ends, meanwhile forwarding the signals the daemon
    sends for it (as messages: a signal cannot say which job it was meant for)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake, select.POLLIN)
    while True:
        with contextlib.suppress(ChildProcessError):
            while (reaped := os.wait4(-1, os.WNOHANG))[0] > 0:
                if reaped[0] == pid:
                    return reaped[1], reaped[2]
        for fd, _ in poller.poll():
            if fd == wake:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 512)
                continue
            message, fds = _wire.receive(sock)
            for received in fds:
                os.close(received)
            if message is None:
                os._exit(0)  # the daemon is gone: so is the job, with this pid namespace
            with contextlib.suppress(OSError):
                os.killpg(pid, int(message["signal"]))


def _end_leftovers(session: int, flags: int) -> None:
    """End every process the command left: with a pid namespace, all of it but this init;
    without one, every descendant (this init is their subreaper). Bounded, like the job."""
    if not flags & _linux.CLONE_NEWPID:
        _end_descendants(session)
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)  # pid 1 of its namespace: everyone but itself
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)


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


def _clean(ready: _Ready) -> bool:
    """Whether the last job left nothing the next could see: no process (this init has no
    child left) and nothing in its private /tmp and /dev/shm."""
    try:
        os.waitpid(-1, os.WNOHANG)
        return False  # a child is left: it could not be ended
    except ChildProcessError:
        pass
    try:
        entries = _entries(ready.scratch)
        return entries is not None and entries == ready.scratch_state
    except OSError:
        return False


def _entries(roots: tuple[str, ...]) -> frozenset[tuple[str, int, int]] | None:
    """Every entry in the file systems of ``roots`` (path, inode, mode), without following
    a symlink or entering another mount (a jail bound inside is the jobs' to change); None
    past MAX_SCRATCH_ENTRIES."""
    found = set()
    for root in roots:
        device = os.lstat(root).st_dev
        pending = [root]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    found.add((entry.path, st.st_ino, st.st_mode))
                    if len(found) > MAX_SCRATCH_ENTRIES:
                        return None
                    if entry.is_dir(follow_symlinks=False) and st.st_dev == device:
                        pending.append(entry.path)
    return frozenset(found)


def _time_left() -> bool:
    """Whether this init's own CPU time is well within the RLIMIT_CPU it shares with its
    jobs (it accumulates over them)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return soft == resource.RLIM_INFINITY or usage.ru_utime + usage.ru_stime < soft / 2


_RLIMITS = tuple(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))


def _inheritable() -> tuple[object, ...]:
    """What a job may change of this init from outside (it runs as the same user) that the
    next job would inherit: its rlimits (prlimit), CPU affinity, I/O priority (ioprio_set)
    and scheduling attributes (sched_setattr: policy, nice, priority, utilisation
    clamps)."""
    return (tuple(resource.getrlimit(r) for r in _RLIMITS), os.sched_getaffinity(0),
            _linux.ioprio(), _linux.sched_attr())
