"""The service manager's protocols, spoken directly: sd_notify and socket activation.

Both are a few lines over the environment and a datagram socket, so the daemon needs no
libsystemd. Each reader takes its variables out of the environment, as sd_notify's and
sd_listen_fds' ``unset_environment`` do: nothing started later (the sandbox helper, a job)
could otherwise talk to the manager as if it were the daemon.

- ``Notifier``: ``$NOTIFY_SOCKET`` (``READY=1``, ``STATUS=``, ``WATCHDOG=1``,
  ``RELOADING=1``, ``STOPPING=1``) and ``$WATCHDOG_USEC``.
- ``listen_sockets``: ``$LISTEN_FDS`` / ``$LISTEN_FDNAMES`` / ``$LISTEN_PID``; only unix
  stream sockets are adopted (grpc's Python server cannot take over a TCP socket).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

import structlog

LISTEN_FDS_START = 3
"""sd_listen_fds(3): the first inherited descriptor."""
log = structlog.get_logger()


class Notifier:
    """Sends state changes to the service manager; silent when none listens."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        self.watchdog_interval = watchdog_usec / 1e6 if watchdog_usec else None
        """Seconds within which the manager wants ``WATCHDOG=1``, or None."""
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        """The notifier ``environ`` asks for, its variables removed from it."""
        address = environ.pop("NOTIFY_SOCKET", None) or None
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and int(usec) > 0 else None
        if pid and pid != str(os.getpid()):  # meant for another process of the service
            watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._address is not None

    def ready(self, status: str) -> None:
        """Every listener is bound and the sandbox answers."""
        self._send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A line for ``systemctl status``."""
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        """The daemon is alive: its event loop and its sandbox helper answer."""
        self._send("WATCHDOG=1")

    def reloading(self, status: str) -> None:
        """A reload started; ``ready`` again when it is over (applied or refused)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """The daemon is stopping (draining first)."""
        self._send("STOPPING=1", f"STATUS={status}")

    def _send(self, *lines: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a manager that does not read never stalls us
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._warned:  # once: the manager's state is its own, not the daemon's
                log.warning("systemd.notify_failed", error=os.strerror(exc.errno or errno.EIO))
                self._warned = True

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()


class ActivationError(Exception):
    """An inherited descriptor cannot be served; the message says which and why."""


@dataclass(frozen=True)
class InheritedSocket:
    """A listening unix socket the service manager opened for the daemon."""

    sock: socket.socket
    name: str
    """Its ``FileDescriptorName=`` (``execgated`` in the shipped unit)."""

    @property
    def address(self) -> str:
        """The address clients use, as ``--listen`` spells it."""
        bound = self.sock.getsockname()
        if isinstance(bound, bytes):
            bound = bound.decode(errors="replace")
        if not bound:
            return f"unix:(unnamed socket, fd {self.sock.fileno()})"
        if bound.startswith("\0"):
            return f"unix-abstract:{bound[1:]}"
        return f"unix:{bound}"


def listen_sockets(environ: MutableMapping[str, str]) -> list[InheritedSocket]:
    """The sockets passed by socket activation, their variables removed from ``environ``;
    raises ActivationError for a descriptor that is not a unix stream socket."""
    count = environ.pop("LISTEN_FDS", "")
    pid = environ.pop("LISTEN_PID", "")
    names = environ.pop("LISTEN_FDNAMES", "").split(":")
    if not count.isdigit() or pid != str(os.getpid()):
        return []
    found = []
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else "unknown"
        found.append(InheritedSocket(_adopt(fd, name), name))
    return found


def _adopt(fd: int, name: str) -> socket.socket:
    what = f"LISTEN_FDS: descriptor {fd} ({name})"
    try:
        os.set_inheritable(fd, False)  # the daemon's, never a child's
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"{what} is not a socket: {os.strerror(exc.errno or 0)}") from None
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise ActivationError(
            f"{what} is a TCP socket; execgated adopts unix sockets only: configure TCP "
            "listeners in the policy (server.listen) and drop ListenStream=HOST:PORT from "
            "the .socket unit")
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ActivationError(f"{what} is not a unix stream socket (ListenStream=/path)")
    return sock
