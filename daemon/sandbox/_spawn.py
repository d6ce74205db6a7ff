"""Starting a command: the one place a child process is created.

The daemon runs gRPC's core threads, so it never forks itself to run Python code in a child
(no ``preexec_fn``, no ``os.fork``: gRPC's fork_support.md). ``subprocess.Popen`` without a
``preexec_fn`` is safe here: the child is set up by C code between fork/vfork and exec.
The child gets only fds 0-2 (pipes made here, everything else close-on-exec), its own
process group so the whole group can be signalled, the environment of the Plan and nothing
of the daemon's, and the resolved executable, never a PATH lookup.

Kernel confinement (Landlock, namespaces, rlimits, cgroups) replaces this module's
``spawn`` with one that prepares the child in a single-threaded helper; callers see the same
``Child``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field

from execgate.daemon.model import CommandPlan


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended, from ``wait4``."""

    exit_code: int
    signal: int
    user_time: float
    system_time: float
    max_rss_bytes: int


@dataclass
class Child:
    """A started command: its pid, the daemon's ends of its pipes, and a pidfd to wait on."""

    pid: int
    pidfd: int
    stdin: int | None
    stdout: int
    stderr: int
    _popen: subprocess.Popen[bytes] = field(repr=False)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group; a group already gone is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> ExitStatus:
        """Collect the exit status; call once the pidfd is readable."""
        _, status, usage = os.wait4(self.pid, 0)
        # Popen must not wait for (or later reap a reused) pid it no longer owns.
        self._popen.returncode = os.waitstatus_to_exitcode(status)
        os.close(self.pidfd)
        return ExitStatus(
            exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
            user_time=usage.ru_utime, system_time=usage.ru_stime,
            max_rss_bytes=usage.ru_maxrss * 1024)


def spawn(plan: CommandPlan) -> Child:
    """Start ``plan`` as a child in its own process group, with pipes for 0, 1 and 2."""
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC) if plan.stdin else (subprocess.DEVNULL, None)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            list(plan.argv), executable=plan.executable, cwd=plan.cwd, env=plan.env,
            stdin=stdin_r, stdout=out_w, stderr=err_w, close_fds=True, process_group=0,
            restore_signals=True)
    except BaseException:
        for fd in (stdin_w, out_r, err_r):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (stdin_r, out_w, err_w):
            if fd != subprocess.DEVNULL:
                os.close(fd)
    for fd in (stdin_w, out_r, err_r):
        if fd is not None:
            os.set_blocking(fd, False)
    return Child(pid=popen.pid, pidfd=os.pidfd_open(popen.pid), stdin=stdin_w,
                 stdout=out_r, stderr=err_r, _popen=popen)


