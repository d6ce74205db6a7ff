"""A real redis-server on a unix socket, and fleets of real daemons sharing it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TEST_POLICY, Daemon, start_daemon

REDIS_SERVER = shutil.which("redis-server") or shutil.which("valkey-server")
CLUSTER_KEY = "fleet-secret-0123456789abcdef"


@dataclass
class RedisServer:
    """A redis-server of the test's own, on a unix socket; ``kill`` and ``start`` again."""

    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        """Start it and return once it accepts connections (it says so on stdout)."""
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until redis says it is ready; no sleeping
            if b"ready to accept connections" in line.lower():
                return
        raise RuntimeError(f"redis-server did not start (exit {self.proc.wait()})")

    def kill(self) -> None:
        """SIGKILL: Redis gone at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a unix socket in tmp_path; skipped where none is installed."""
    if REDIS_SERVER is None:
        print("redis-server (or valkey-server) is not installed: .ci/run installs it")
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.kill()


def cluster_policy(redis_url: str, host_id: str, extra_server: str = "",
                   policy: str = TEST_POLICY) -> str:
    """``policy`` with a ``server.cluster`` block (and ``extra_server`` lines under
    ``server:``, indented two spaces)."""
    block = (f"  cluster:\n    redis_url: \"{redis_url}\"\n    host_id: {host_id}\n"
             f"    advertise: ${{ADVERTISE:-127.0.0.1:1}}\n    lease: ${{LEASE:-3s}}\n"
             f"    on_redis_down: ${{ON_REDIS_DOWN:-closed}}\n")
    return policy.replace("server:\n", f"server:\n{block}{extra_server}", 1)


@dataclass
class Fleet:
    """Daemons on loopback sharing one Redis: ``hosts[0]`` is host 1."""

    hosts: list[Daemon] = field(default_factory=list)

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()


def start_fleet(root: Path, redis: RedisServer, count: int = 3, extra_server: str = "",
                policy: str = TEST_POLICY, env: dict[str, str] | None = None,
                urls: dict[int, str] | None = None) -> Fleet:
    """``count`` daemons (host-1 ...) with the same cluster config, each in its own root;
    ``urls`` gives host N another way to Redis (a proxy that can cut it off)."""
    fleet = Fleet()
    try:
        for n in range(1, count + 1):
            host_root = root / f"host-{n}"
            host_root.mkdir()
            fleet.hosts.append(start_daemon(
                host_root, cluster_policy((urls or {}).get(n, redis.url), f"host-{n}",
                                          extra_server, policy),
                env={"EXECGATE_CLUSTER_KEY": CLUSTER_KEY, **(env or {})}))
    except BaseException:
        fleet.stop()
        raise
    return fleet


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    """Three daemons sharing ``redis_server``, with the test policy."""
    started = start_fleet(tmp_path, redis_server)
    yield started
    started.stop()



class Partition:
    """A unix socket in front of Redis for one host: ``cut`` drops its connections and
    refuses new ones (a partition between that host and Redis), ``heal`` ends it."""

    def __init__(self, redis: RedisServer) -> None:
        self._redis = redis
        self.socket = redis.directory / "partitioned.sock"
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.heal()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def heal(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.socket))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.socket.unlink()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self._redis.socket))
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
