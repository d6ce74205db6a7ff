"""Everything ``serve`` refuses, found before anything is served.

``execgated serve`` and ``execgated check-config`` both call ``preflight``, so a policy that
check-config calls valid is one that serve runs: on the same host, as the same user, from the
same directory (jails, run_as users and kernel limits are this host's). Every problem is
listed at once with its key path, as the loader does for the file itself.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from execgate.daemon.auth import check_jwks_url
from execgate.daemon.config import ConfigError, KeyMarks, PolicyConfig, ToolConfig
from execgate.daemon.policy import ConfinementError, Policy

NR_OPEN = Path("/proc/sys/fs/nr_open")
"""The kernel's ceiling on RLIMIT_NOFILE on this host."""
MIN_CLUSTER_KEY = 16
"""Characters of the fleet's shared secret, at least."""


@dataclass(frozen=True)
class Listener:
    """An address to serve on: ``HOST:PORT`` or ``unix:PATH``."""

    address: str

    @property
    def is_unix(self) -> bool:
        """Whether this is a unix socket."""
        return self.address.startswith("unix:")

    def problem(self, tls: bool) -> str | None:
        """Why this address cannot be served: plaintext only on loopback and unix sockets."""
        if self.is_unix:
            return None
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit():
            return f"listen address {self.address!r} is not HOST:PORT or unix:PATH"
        host = host.strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not tls:
            return (f"listen address {self.address!r}: plaintext gRPC is only served on "
                    "loopback (127.0.0.1, ::1) or a unix socket; configure server.tls (or "
                    "--tls-cert/--tls-key), or force it with server.allow_remote_plaintext")
        return None


@dataclass(frozen=True)
class Preflight:
    """What serve needs, checked: the policy, every tool's sandbox resolved, and where to
    listen."""

    policy: Policy
    listeners: list[Listener]


def listeners(config: PolicyConfig, flags: Sequence[str],
              inherited: Sequence[str] = ()) -> tuple[list[Listener], list[str]]:
    """The listeners (``--listen`` flags win over ``server.listen`` and ``server.port``) and
    the problems with them; they add to the ``inherited`` sockets (socket activation)."""
    addresses = list(flags) or config.server.listen or (
        [f"127.0.0.1:{config.server.port}"] if config.server.port is not None else [])
    if not addresses:
        return [], [] if inherited else [
            "nowhere to listen: give --listen, server.listen or server.port"]
    found = [Listener(a) for a in addresses]
    tls = config.server.tls is not None or config.server.allow_remote_plaintext
    return found, [p for listener in found if (p := listener.problem(tls)) is not None]


def _auth_problems(config: PolicyConfig, found: list[Listener]) -> list[str]:
    auth, tls = config.server.auth, config.server.tls
    problems = []
    if auth.jwt:
        try:
            check_jwks_url(auth.jwks_url or "")
        except ValueError as exc:
            problems.append(f"server.auth.{exc}")
    # Required credentials no caller can present would look protected and serve nothing.
    if (auth.enabled and auth.require_auth and not auth.api_keys and not auth.jwt
            and not (tls and tls.client_ca) and not any(f.is_unix for f in found)):
        problems.append("server.auth.require_auth: true, but no caller can authenticate: give "
                        "api_keys, a JWT issuer (jwks_url, issuer, audience), "
                        "server.tls.client_ca or a unix: listener, or set require_auth: false")
    return problems


def _tls_problems(config: PolicyConfig, base: Path) -> list[str]:
    tls = config.server.tls
    if tls is None:
        return []
    return [f"server.tls.{key}: {path} is not a readable file"
            for key, path in (("cert", tls.cert), ("key", tls.key), ("client_ca", tls.client_ca))
            if path and not ((base / path).is_file() and os.access(base / path, os.R_OK))]


def _jail_problem(name: str, tool: ToolConfig, base: Path, create: bool) -> str | None:
    where = f"tools.{name}.working_directory"
    try:
        jail = (base / tool.working_directory).resolve()
        if create:
            # Readable by the run_as user, as a directory made by hand would be.
            jail.mkdir(mode=0o755, parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return f"{where}: {tool.working_directory} cannot be resolved to a directory"
    if not jail.is_dir():
        return (f"{where}: {jail} does not exist or is not a directory; create it, or point "
                "the tool at an existing directory")
    return None


def _confinement_problems(config: PolicyConfig, base: Path, tools: list[str]) -> list[str]:
    problems = []
    for name in tools:
        # Policy stops at the first tool it cannot confine; one tool at a time lists them all.
        try:
            Policy(config.model_copy(update={"tools": {name: config.tools[name]}}), base)
        except ConfinementError as exc:
            problems.append(str(exc))
    return problems


def _cluster_problems(config: PolicyConfig) -> list[str]:
    cluster = config.server.cluster
    if cluster is None:
        return []
    problems = []
    if importlib.util.find_spec("redis") is None:
        problems.append("server.cluster needs the Redis client: pip install 'execgate[cluster]'")
    host, sep, port = cluster.advertise.rpartition(":")
    if not (host and sep and port.isdigit()):
        problems.append(f"server.cluster.advertise: {cluster.advertise!r} is not HOST:PORT, "
                        "the address this daemon's peers reach it at")
    if len(os.environ.get(cluster.key_env, "")) < MIN_CLUSTER_KEY:
        problems.append(f"server.cluster.key_env: set {cluster.key_env} to the fleet's shared "
                        f"secret (at least {MIN_CLUSTER_KEY} characters, the same on every "
                        "host)")
    if config.server.tls is not None:
        problems.append("server.cluster with server.tls: daemons reach each other's "
                        "advertise address over plaintext gRPC, which a TLS-only daemon "
                        "refuses (not supported yet; use a mesh that encrypts pod-to-pod "
                        "traffic instead of server.tls)")
    return problems


def _open_files_problems(config: PolicyConfig) -> list[str]:
    try:
        nr_open = int(NR_OPEN.read_text())
    except (OSError, ValueError):
        return []  # no /proc: the job's setrlimit is the judge
    written = [("sandbox.limits.open_files", config.sandbox.limits.open_files)]
    written += [(f"tools.{name}.sandbox.limits.open_files", tool.sandbox.limits.open_files)
                for name, tool in config.tools.items()
                if tool.sandbox is not None and tool.sandbox.limits is not None]
    return [f"{key}: {value} is more than this host's fs.nr_open ({nr_open}), the most "
            "RLIMIT_NOFILE may be" for key, value in written
            if value is not None and value > nr_open]


def make_policy(config: PolicyConfig, source: str, base: Path) -> Policy:
    """The policy with every tool's sandbox resolved; raises ConfigError listing each tool
    that cannot be confined here (an unknown run_as user, ...). Jails need not exist yet."""
    problems = _confinement_problems(config, base, list(config.tools))
    if problems:
        raise ConfigError(source, problems)
    return Policy(config, base)


def preflight(config: PolicyConfig, source: str, base: Path, listen: Sequence[str] = (),
              create_jails: bool = False, known: Sequence[str] = (),
              marks: KeyMarks | None = None, inherited: Sequence[str] = ()) -> Preflight:
    """Check everything serve needs of ``config`` on this host; raises ConfigError listing
    every problem, with the ``known`` ones the loader found, placed by ``marks`` (the
    loaded file's). ``create_jails`` makes missing working directories (the embedded
    default brings its own). ``inherited`` are the addresses of the unix sockets the service
    manager passed: already bound, they count as listeners."""
    found, problems = listeners(config, listen, inherited)
    problems = [*known, *problems]
    problems += _auth_problems(config, [*found, *map(Listener, inherited)])
    problems += _tls_problems(config, base)
    jails = {name: _jail_problem(name, tool, base, create_jails)
             for name, tool in config.tools.items()}
    problems += [p for p in jails.values() if p is not None]
    problems += _confinement_problems(config, base, [n for n, p in jails.items() if p is None])
    problems += _open_files_problems(config)
    problems += _cluster_problems(config)
    if problems:
        raise ConfigError(source, problems, marks=marks)
    return Preflight(Policy(config, base), found)
