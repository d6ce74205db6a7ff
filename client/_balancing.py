"""Targets for a fleet: one name that resolves to many daemons, or a list of addresses.

Either is spread over its daemons with gRPC's own ``round_robin`` policy, and each daemon is
health-checked on the connection (``grpc.health.v1`` Watch, which the daemon answers without
a credential by default: ``server.auth.excluded_paths: [/health]``): a daemon that drains
turns NOT_SERVING and gets no new calls while its running ones go on.

- ``dns:///name:port``: gRPC's DNS resolver, every A/AAAA record of the name (in Kubernetes
  the headless Service); it resolves again when a connection fails.
- a list, ``["10.0.0.1:7878", "10.0.0.2:7878"]`` (or ``"h1:7878,h2:7878"``, as
  ``$EXECGATE_TARGET`` may give it): a static list. Names in it are resolved once, when the
  client is made; a set of daemons that changes wants ``dns:///``.

A single plain address keeps gRPC's default: one connection, no health checking.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from typing import Any

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})
"""round_robin over the daemons that report SERVING for the server as a whole."""
BALANCED: list[tuple[str, Any]] = [("grpc.service_config", SERVICE_CONFIG),
                                   ("grpc.enable_retries", 0)]
"""Channel options of a balanced target. No transparent retries: a call refused by one
daemon is the caller's to retry, never sent to another one behind its back."""


def channel_target(target: str | Sequence[str]) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target for ``target`` and the options it needs on top of the client's."""
    if isinstance(target, str):
        if target.startswith("dns:"):
            return target, BALANCED
        if "," not in target or ":/" in target or target.startswith(("ipv4:", "ipv6:")):
            return target, []
        target = target.split(",")
    if not target:
        raise ValueError("no address to connect to: the list of targets is empty")
    addresses = [address for entry in target for address in _resolved(entry.strip())]
    family = addresses[0].version
    listed = [a for a in addresses if a.version == family]
    # gRPC takes one family per static list: ipv4:a:p,b:p or ipv6:[a]:p,[b]:p.
    scheme = f"ipv{family}:" + ",".join(str(a) for a in listed)
    return scheme, [*BALANCED, ("grpc.default_authority", str(target[0]).strip())]


class _Address:
    """One resolved daemon address: an IP literal and a port."""

    def __init__(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
        self.version = ip.version
        self._text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"

    def __str__(self) -> str:
        return self._text


def _resolved(entry: str) -> list[_Address]:
    """``host:port`` (``[v6]:port``) as addresses; a name gives each address it resolves to."""
    host, sep, port_text = entry.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"{entry!r} is not host:port; a list of targets names each "
                         "daemon's address and port")
    host, port = host.strip("[]"), int(port_text)
    try:
        return [_Address(ipaddress.ip_address(host), port)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    seen = dict.fromkeys(str(info[4][0]) for info in infos)
    return [_Address(ipaddress.ip_address(ip.partition("%")[0]), port) for ip in seen]
