"""Messages between the daemon, the sandbox helper and each job's init: JSON with fds (what
they say is typed in ``_protocol``).

SOCK_SEQPACKET keeps message boundaries, and SCM_RIGHTS carries the job's pipe ends, so the
daemon never hands a process anything but the three descriptors it made for the job.
"""

from __future__ import annotations

import array
import json
import socket
from collections.abc import Mapping
from typing import Any

MAX_MESSAGE = 4 * 1024 * 1024
MAX_FDS = 4


def send(sock: socket.socket, message: Mapping[str, Any], fds: list[int] | None = None) -> None:
    """Send one message, with ``fds`` attached."""
    data = json.dumps(message, separators=(",", ":")).encode()
    ancillary = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                 if fds else [])
    sock.sendmsg([data], ancillary)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; (None, []) at end of stream."""
    fds = array.array("i")
    # The message's size first: a buffer of MAX_MESSAGE for each one costs Python an mmap,
    # an mremap and a munmap (15 us a message here, several messages a call).
    size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    # Received descriptors are close-on-exec, so that none leaks past the command's 0, 1, 2.
    data, ancillary, _flags, _addr = sock.recvmsg(
        min(max(size, 1), MAX_MESSAGE), socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
        socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        return None, list(fds)
    message: dict[str, Any] = json.loads(data)
    return message, list(fds)
