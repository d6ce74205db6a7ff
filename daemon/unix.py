"""Unix socket listeners whose callers are known by their uid (SO_PEERCRED).

gRPC's Python server does not reveal a unix peer's credentials, so the daemon accepts on the
socket itself: it reads each connection's SO_PEERCRED, closes those from uids the policy does
not allow, and relays the rest, byte for byte, to a second gRPC server of its own on loopback
that admits nothing but the relay. The relay's source port names the connection there, and
the interceptor maps it back to the uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

import structlog

log = structlog.get_logger()
_CHUNK = 64 * 1024


class UnixRelay:
    """Accepts on unix sockets; relays allowed peers to ``internal_port``."""

    def __init__(self, allowed_uids: set[int]) -> None:
        self._allowed = allowed_uids
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        _, uid, _ = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid not in self._allowed:
            log.warning("unix.refused", uid=uid, audit=True,
                        reason="uid not in server.unix_uids")
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

    def close(self) -> None:
        """Stop accepting."""
        for server in self._servers:
            server.close()


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
