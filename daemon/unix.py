"""Unix socket listeners whose callers are known by their uid (SO_PEERCRED), never jobs.

gRPC's Python server does not reveal a unix peer's credentials, so the daemon accepts on the
socket itself: it reads each connection's SO_PEERCRED, closes those from uids the policy does
not allow and those from the daemon's own jobs (``OwnJobs``), and relays the rest, byte for
byte, to a second gRPC server of its own on loopback that admits nothing but the relay. The
relay's source port names the connection there, and the interceptor maps it back to the uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import struct

from execgate.daemon.audit import Audit

_CHUNK = 64 * 1024
_SO_PEERPIDFD = 77
"""Linux 6.5+: a pidfd of the peer, so that the process inspected is the one that connected
(its pid cannot be reused while the pidfd shows it alive). Python 3.11 has no name for it."""
_JOB_CGROUP = re.compile(r"/execgate-[0-9]+/job-[0-9]+(/|$)", re.MULTILINE)
_MAX_ANCESTORS = 4096


class OwnJobs:
    """Tells this daemon's jobs, and peers it cannot inspect, from the operator's processes.

    A uid does not: an unprivileged daemon's jobs run under its own uid. Each sign below
    holds for some sandbox configuration, none can be shed by the job (setsid and double
    forks included), and all are read from /proc files any local user may read:

    - a pid namespace below the daemon's (jobs with ``namespaces``);
    - another user namespace (every job of an unprivileged daemon: its helper makes one);
    - an execgate job cgroup (jobs with a process or memory limit);
    - descent from this daemon (every job while its command's process tree holds it).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._pid_depth = len(_status("self")["NSpid"].split())
        self._uid_map = _read("/proc/self/uid_map")

    def refusal(self, pid: int) -> str | None:
        """Why the process ``pid`` may not call over a unix socket, or None."""
        if pid <= 0:
            return "the peer's process is not visible from the daemon's pid namespace"
        try:
            status = _status(str(pid))
            uid_map = _read(f"/proc/{pid}/uid_map")
            cgroups = _read(f"/proc/{pid}/cgroup")
            descends = self._descends(pid, status)
        except (OSError, KeyError, ValueError):
            return "the peer's process cannot be inspected"
        if len(status["NSpid"].split()) != self._pid_depth:
            return "the peer is a job: it runs in a pid namespace below the daemon's"
        if uid_map != self._uid_map:
            return "the peer is a job: it runs in another user namespace"
        if _JOB_CGROUP.search(cgroups):
            return "the peer is a job: it is in an execgate job cgroup"
        if descends:
            return "the peer is a job: it descends from the daemon"
        return None

    def _descends(self, pid: int, status: dict[str, str]) -> bool:
        for _ in range(_MAX_ANCESTORS):
            parent = int(status["PPid"])
            if parent == self._pid:
                return True
            if parent <= 1:
                return False
            status = _status(str(parent))
        raise ValueError(f"no end to the ancestry of {pid}")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _status(pid: str) -> dict[str, str]:
    fields = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


class UnixRelay:
    """Accepts on unix sockets; relays allowed peers to ``internal_port``."""

    def __init__(self, allowed_uids: set[int], audit: Audit) -> None:
        self._allowed = allowed_uids
        self._audit = audit
        self._jobs = OwnJobs()
        self._peers: dict[int, int] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self.internal_port = 0

    def uid_for(self, peer: str) -> int | None:
        """The uid behind a call on the internal server, from its peer ``ipv4:127.0.0.1:P``."""
        host, _, port = peer.rpartition(":")
        if host not in ("ipv4:127.0.0.1", "ipv6:[::1]") or not port.isdigit():
            return None
        return self._peers.get(int(port))

    async def listen(self, path: str) -> None:
        """Accept on ``path`` (replacing a stale socket file)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(self._accept, path)
        # The uid check decides who may call; the file mode only lets them knock.
        os.chmod(path, 0o666 if self._allowed - {os.geteuid()} else 0o600)
        self._servers.append(server)

    async def adopt(self, sock: socket.socket) -> None:
        """Accept on a socket someone else bound (socket activation): its file's owner and
        mode are the service manager's (``SocketMode=``); callers are judged as on ours."""
        self._servers.append(await asyncio.start_unix_server(self._accept, sock=sock))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        reason = ("uid not in server.unix_uids" if uid not in self._allowed
                  else self._judge(sock, pid))
        if reason is not None:
            self._audit.unix_refused(uid=uid, pid=pid, reason=reason)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.internal_port)
        except OSError:
            writer.close()
            return
        port = up_writer.get_extra_info("sockname")[1]
        self._peers[port] = uid
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._peers.pop(port, None)
            for w in (writer, up_writer):
                w.close()

    def _judge(self, sock: socket.socket, pid: int) -> str | None:
        """Why the peer is refused although its uid is allowed (it is a job), or None."""
        try:
            pidfd = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:  # a kernel without it cannot pin the peer
                return "the peer's process is gone"
            pidfd = -1
        try:
            reason = self._jobs.refusal(pid)
            if reason is None and pidfd >= 0 and not _alive(pidfd):
                # The pid was inspected after the peer exited: perhaps another process's.
                return "the peer's process is gone"
            return reason
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def close(self) -> None:
        """Stop accepting."""
        for server in self._servers:
            server.close()


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except PermissionError:  # alive, and not ours to signal
        return True
    except ProcessLookupError:
        return False
    return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
