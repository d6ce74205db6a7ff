"""Assembly and lifecycle: the policy in force, its collaborators, the gRPC servers and their
listeners, from start through reloads to a drained stop.

Signals: SIGHUP reloads the policy (``Lifecycle.reload``); the first SIGTERM or SIGINT
drains (no new calls; running ones have ``server.drain_timeout`` to end, then are stopped)
and a second stops at once. The service manager hears each step (``systemd.Notifier``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from execgate.daemon import snapshot
from execgate.daemon.approvals import Approvals
from execgate.daemon.audit import Audit
from execgate.daemon.config import ConfigError, PolicyConfig, RateLimitConfig
from execgate.daemon.heap import HeapTrimmer, glibc_trim, keep_big_blocks
from execgate.daemon.limits import RateLimiter, RunSlots
from execgate.daemon.model import Denial
from execgate.daemon.observe import ObserverError, Observing
from execgate.daemon.policy import Policy
from execgate.daemon.preflight import Listener, Preflight
from execgate.daemon.sandbox import HostSupport, Spawner, _linux, layers_for
from execgate.daemon.services import AgentService, ApprovalService, AuthInterceptor, ExecService
from execgate.daemon.systemd import InheritedSocket, Notifier
from execgate.daemon.tls import ReloadingCredentials
from execgate.daemon.unix import UnixRelay
from execgate.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    approvals_pb2,
    approvals_pb2_grpc,
    exec_pb2,
    exec_pb2_grpc,
)

if TYPE_CHECKING:
    from execgate.daemon.cluster import Cluster
    from execgate.daemon.cluster.runs import FleetRuns

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVICES = (exec_pb2.DESCRIPTOR.services_by_name["ExecService"].full_name,
            agents_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
            approvals_pb2.DESCRIPTOR.services_by_name["ApprovalService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME)
KEEPALIVE = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
             ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
"""A connection quiet for a minute is pinged and dropped when no answer comes in 20s (its
non-detached runs are then cancelled); clients may ping every 10s (execgate's client
pings every 30s)."""
SHUTDOWN_GRACE = 5.0
STATUS_PERIOD = 5.0
"""Seconds between checks of the run count for STATUS= when no watchdog is asked for."""
EMBEDDED = "(embedded default)"
log = structlog.get_logger()

Reload = Callable[[], tuple[str, PolicyConfig, Preflight]]
"""Reads and checks the policy file again, as serve did: its source, the policy and what
preflight made of it; raises ConfigError listing every problem."""


class StartupError(Exception):
    """The daemon cannot start as configured; the message says what to change."""


def sandbox_report(policy: Policy, host: HostSupport) -> list[tuple[str, str]]:
    """(level, message) for each tool whose sandbox this host cannot fully give."""
    out = []
    for tool, confinement in policy.confinements.items():
        try:
            layers = layers_for(tool, confinement, host)
        except Denial as denial:
            out.append(("error", f"every call to {tool} will be refused: {denial}"))
            continue
        for layer, mode, used in (("filesystem", confinement.filesystem, layers.landlock),
                                  ("namespaces", confinement.namespaces, layers.namespaces),
                                  ("cgroup", confinement.cgroup, layers.cgroup)):
            if mode == "optional" and not used:
                out.append(("warning", f"tools.{tool}.sandbox.{layer} is optional and "
                                       "unavailable on this host: skipped"))
    return out


async def serve(config: PolicyConfig, checked: Preflight,
                on_ready: Callable[[list[str]], None], reload: Reload | None = None,
                inherited: Sequence[InheritedSocket] = (), source: str = EMBEDDED) -> None:
    """Serve ``checked`` (see ``preflight``) on its listeners and the ``inherited`` sockets
    until SIGTERM or SIGINT, reloading on SIGHUP (``reload``: None for the embedded default,
    which has nothing to read again); then drain and stop."""
    notifier = Notifier.from_environ(os.environ)
    # No command may read this process's memory or environment through /proc or ptrace.
    _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
    # The helper starts before the gRPC server, as a fresh exec: nothing forks this process.
    try:
        observing = Observing(config.logger, config.server.observability, os.environ)
    except ObserverError as exc:
        raise StartupError(str(exc)) from None
    observing.audit.policy_loaded(source)
    trim = glibc_trim()
    if trim is not None:  # freed output buffers lie scattered in glibc's arenas
        observing.audit.subscribe(HeapTrimmer(trim))
        keep_big_blocks()
    spawner = Spawner.start()
    lifecycle = Lifecycle(config, checked, spawner, notifier, reload, observing)
    try:
        await lifecycle.run(inherited, on_ready)
    finally:
        spawner.close()
        notifier.close()
        observing.close()  # last: the helper's reports of lost runs are recorded


def _cluster(config: PolicyConfig) -> Cluster | None:
    """The fleet this daemon joins; None alone (then Redis's client is never imported)."""
    if config.server.cluster is None:
        return None
    from execgate.daemon.cluster import Cluster
    return Cluster(config.server.cluster)


def _shared(config: PolicyConfig, audit: Audit, cluster: Cluster | None,
            ) -> tuple[Approvals, Callable[[RateLimitConfig], RateLimiter]]:
    """Approvals and rate limiters: the fleet's, through Redis, or this daemon's own."""
    if cluster is None:
        return Approvals(config.approvals, audit), RateLimiter
    from execgate.daemon.cluster import SharedApprovals, SharedRateLimiter
    return (SharedApprovals(config.approvals, audit, cluster),
            functools.partial(SharedRateLimiter, cluster=cluster))


def _fleet_runs(cluster: Cluster | None) -> FleetRuns | None:
    """This host's part in the fleet's registry of runs, and its hops to the others."""
    if cluster is None:
        return None
    from execgate.daemon.cluster.runs import FleetRuns
    return FleetRuns.joining(cluster)


class Lifecycle:
    """One daemon's collaborators, and what each signal does to them."""

    def __init__(self, config: PolicyConfig, checked: Preflight, spawner: Spawner,
                 notifier: Notifier, reload: Reload | None, observing: Observing) -> None:
        self._config = config  # the start's: listeners and the rest of RESTART_ONLY
        self._checked = checked
        self._spawner = spawner
        self._notifier = notifier
        self._read_again = reload
        self._observing = observing
        self._audit = observing.audit
        self._cluster = _cluster(config)
        self._fleet = _fleet_runs(self._cluster)
        self._approvals, self._make_limiter = _shared(config, self._audit, self._cluster)
        self._health = health_aio.HealthServicer()
        self._bound: list[str] = []
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self._current: snapshot.Current
        self._exec: ExecService

    async def run(self, inherited: Sequence[InheritedSocket],
                  on_ready: Callable[[list[str]], None]) -> None:
        """Serve until told to stop, then drain and stop."""
        self._spawner.attach(asyncio.get_running_loop(), self._audit)
        if self._cluster is not None:
            await self._cluster.start()
        self._approvals.start()
        if self._fleet is not None:
            self._fleet.start()
        for level, message in sandbox_report(self._checked.policy, self._spawner.host):
            getattr(log, level)("sandbox", detail=message)
        first = await snapshot.build(self._config, self._checked.policy,
                                     make_limiter=self._make_limiter)
        self._current = snapshot.Current(first)
        self._exec = ExecService(self._current, RunSlots(self._config.server.max_concurrent_runs),
                                 self._spawner, self._approvals, self._audit, self._fleet)
        servers, relay = await self._listen(inherited)
        for name in ("", *SERVICES[:3]):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        log.info("serving", addresses=self._bound)
        on_ready(self._bound)
        self._notifier.ready(self._status())
        heartbeat = loop.create_task(self._heartbeat()) if self._notifier.enabled else None
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            if relay is not None:
                relay.close()
            await asyncio.gather(*(server.stop(SHUTDOWN_GRACE) for server in servers))
            # Calls still open at the grace were cancelled, which kills their runs: the
            # helper's reports of those deaths are what the audit records, so it must
            # outlive them.
            if not await self._exec.wait_ended(SHUTDOWN_GRACE):
                log.warning("runs.unrecorded", runs=self._exec.active_runs)
            if heartbeat is not None:
                heartbeat.cancel()
            jwks = self._current.snapshot.jwks
            if jwks is not None:
                jwks.stop()
            if self._fleet is not None:
                await self._fleet.close()
            if self._cluster is not None:
                await self._cluster.close()

    def _on_stop_signal(self) -> None:
        if self._stop.is_set():
            self._hurry.set()  # the second one: stop without waiting for the drain
        self._stop.set()

    def _on_reload_signal(self) -> None:
        if self._stop.is_set():
            log.info("policy.reload_ignored", detail="the daemon is stopping")
            return
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _listen(self, inherited: Sequence[InheritedSocket],
                      ) -> tuple[list[grpc.aio.Server], UnixRelay | None]:
        """Bind every listener; the service manager's sockets are listed first."""
        config = self._config
        servers: list[grpc.aio.Server] = []
        tcp: list[Listener] = [lsn for lsn in self._checked.listeners if not lsn.is_unix]
        unix: list[Listener] = [lsn for lsn in self._checked.listeners if lsn.is_unix]
        self._bound = [sock.address for sock in inherited]
        if tcp:
            server = self._grpc_server(AuthInterceptor(
                self._current, self._audit, hops=self._fleet.hops if self._fleet else None))
            tls = ReloadingCredentials(config.server.tls) if config.server.tls else None
            for listener in tcp:
                try:
                    port = (server.add_secure_port(listener.address, tls.credentials) if tls
                            else server.add_insecure_port(listener.address))
                except RuntimeError as exc:
                    raise StartupError(f"cannot listen on {listener.address}: {exc}") from None
                self._bound.append(f"{listener.address.rpartition(':')[0]}:{port}")
            servers.append(server)
        relay = None
        if unix or inherited:
            uids = config.server.unix_uids
            relay = UnixRelay(set(uids) if uids is not None else {os.geteuid()}, self._audit)
            internal = self._grpc_server(AuthInterceptor(self._current, self._audit,
                                                         relay.uid_for))
            relay.internal_port = internal.add_insecure_port("127.0.0.1:0")
            self._audit.unix_relay(f"127.0.0.1:{relay.internal_port}")
            servers.append(internal)
        for server in servers:
            await server.start()
        for sock in inherited:
            assert relay is not None
            await relay.adopt(sock.sock)
        for listener in unix:
            assert relay is not None
            try:
                await relay.listen(listener.address.removeprefix("unix:"))
            except OSError as exc:
                raise StartupError(f"cannot listen on {listener.address}: {exc}") from None
            self._bound.append(listener.address)
        return servers, relay

    def _grpc_server(self, interceptor: AuthInterceptor) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=[("grpc.so_reuseport", 0),  # two daemons must not share a port silently
                     ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     *KEEPALIVE])
        exec_pb2_grpc.add_ExecServiceServicer_to_server(self._exec, server)
        agents_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(self._current, self._audit), server)
        approvals_pb2_grpc.add_ApprovalServiceServicer_to_server(
            ApprovalService(self._approvals, self._spawner), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(SERVICES, server)
        return server

    def _status(self) -> str:
        runs = self._exec.active_runs
        return (f"serving on {', '.join(self._bound)}; "
                f"{runs} run{'' if runs == 1 else 's'} in progress")

    async def reload(self) -> None:
        """Read, check and put in force the policy file again, for new calls; a policy that
        does not pass every check is refused whole and the one in force stays."""
        if self._read_again is None:
            log.warning("policy.reload_ignored", source=EMBEDDED)
            self._audit.policy_reload_refused(EMBEDDED, [
                "the embedded default policy has no file to read again; restart to change it"])
            return
        async with self._reloading:
            self._notifier.reloading("reloading the policy")
            try:
                await self._reload(self._read_again)
            finally:
                self._notifier.ready(self._status())

    async def _reload(self, read_again: Reload) -> None:
        try:
            source, config, checked = read_again()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("policy.reload_error", source=exc.source, error=problem)
            self._audit.policy_reload_refused(exc.source, list(exc.problems))
            return
        except Exception:  # a reload must never end a daemon that serves
            log.error("policy.reload_failed", traceback=traceback.format_exc())
            self._audit.policy_reload_refused("(unknown)", [
                "the policy could not be read (the daemon's log has the reason)"])
            return
        old = self._current.snapshot
        config, needs_restart = snapshot.keep_restart_only(old.config, config)
        for setting in needs_restart:
            log.warning("policy.needs_restart", setting=setting,
                        detail="changed in the file; it keeps its old value until a restart")
        new = await snapshot.build(config, checked.policy, old, self._make_limiter)
        self._current.snapshot = new  # new calls from here on; running ones keep theirs
        if old.jwks is not None and old.jwks is not new.jwks:
            old.jwks.stop()
        for level, message in sandbox_report(checked.policy, self._spawner.host):
            getattr(log, level)("sandbox", detail=message)
        self._observing.reopen()  # a rotated audit file is continued by a new one
        self._audit.policy_reloaded(source, needs_restart)

    async def _drain(self) -> None:
        """Refuse new calls, let running ones end up to ``server.drain_timeout`` (or the
        next stop signal), then stop what is left: SIGTERM, SIGKILL after kill_grace."""
        timeout = self._current.snapshot.config.server.drain_timeout
        runs = self._exec.active_runs
        self._notifier.stopping(f"draining: {runs} run{'' if runs == 1 else 's'} in "
                                f"progress, up to {timeout:g}s")
        await self._health.enter_graceful_shutdown()  # probes see NOT_SERVING first
        self._exec.refuse_new()
        self._approvals.close()  # nothing ran for them: no reason to hold the stop
        self._audit.draining(runs, timeout)
        ended = asyncio.ensure_future(self._exec.wait_ended(timeout))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({ended, hurry}, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        ended.cancel()
        log.info("stopping", runs=self._exec.active_runs)
        self._exec.stop_all()

    async def _heartbeat(self) -> None:
        """WATCHDOG=1 at half the manager's interval while the loop (this task runs on it)
        and the sandbox helper answer; STATUS= when the run count changes."""
        interval = self._notifier.watchdog_interval
        period = interval / 2 if interval else STATUS_PERIOD
        loop = asyncio.get_running_loop()
        missed, runs, tick = 0, self._exec.active_runs, loop.time()
        while True:
            tick += period
            await asyncio.sleep(max(0.0, tick - loop.time()))
            if self._exec.active_runs != runs:
                runs = self._exec.active_runs
                self._notifier.status(self._status())
            if interval is None:
                continue
            if not await self._spawner.ping(period / 2):
                missed += 1
                self._audit.helper_unanswered(missed)
                self._notifier.status(f"sandbox helper not answering: {missed} ping"
                                      f"{'' if missed == 1 else 's'} missed; watchdog withheld")
                continue
            if missed:
                missed = 0
                self._notifier.status(self._status())
            self._notifier.watchdog()
