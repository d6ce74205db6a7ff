"""Assembly: one policy, its collaborators, the gRPC server and its listeners."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from execgate.daemon.access import Access
from execgate.daemon.approvals import Approvals
from execgate.daemon.audit import Audit
from execgate.daemon.auth import Authenticator, JwksCache, JwtVerifier
from execgate.daemon.config import PolicyConfig
from execgate.daemon.limits import RateLimiter, RunSlots
from execgate.daemon.model import Denial
from execgate.daemon.policy import Policy
from execgate.daemon.preflight import Preflight
from execgate.daemon.sandbox import HostSupport, Spawner, _linux, layers_for
from execgate.daemon.services import AgentService, ApprovalService, AuthInterceptor, ExecService
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

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVICES = (exec_pb2.DESCRIPTOR.services_by_name["ExecService"].full_name,
            agents_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
            approvals_pb2.DESCRIPTOR.services_by_name["ApprovalService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME)
SHUTDOWN_GRACE = 5.0
log = structlog.get_logger()


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
                on_ready: Callable[[list[str]], None]) -> None:
    """Serve ``checked`` (see ``preflight``) until SIGTERM or SIGINT, then stop runs and
    drain calls."""
    policy, addresses = checked.policy, checked.listeners
    # No command may read this process's memory or environment through /proc or ptrace.
    _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
    # The helper starts before the gRPC server, as a fresh exec: nothing forks this process.
    spawner = Spawner.start()
    audit = Audit()
    spawner.attach(asyncio.get_running_loop(), audit)
    for level, message in sandbox_report(policy, spawner.host):
        getattr(log, level)("sandbox", detail=message)
    access = Access(config)
    jwks = None
    if config.server.auth.jwt:
        assert config.server.auth.jwks_url
        jwks = JwksCache(config.server.auth.jwks_url, config.server.auth.refresh_interval,
                         config.server.auth.jwks_cooldown)
        await jwks.refresh()  # before serving: no window in which every token fails
        jwks.start()
    authenticator = Authenticator(config.server.auth,
                                  JwtVerifier(config.server.auth, jwks) if jwks else None)
    approvals = Approvals(config.approvals, audit)
    exec_service = ExecService(access, policy, RateLimiter(config.server.rate_limiting),
                               RunSlots(config.server.max_concurrent_runs), spawner, approvals,
                               audit)
    approval_service = ApprovalService(approvals, spawner)
    agent_service = AgentService(access, config)
    health = health_aio.HealthServicer()

    def grpc_server(interceptor: AuthInterceptor) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=[("grpc.so_reuseport", 0),  # two daemons must not share a port silently
                     ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        exec_pb2_grpc.add_ExecServiceServicer_to_server(exec_service, server)
        agents_pb2_grpc.add_AgentServiceServicer_to_server(agent_service, server)
        approvals_pb2_grpc.add_ApprovalServiceServicer_to_server(approval_service, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(SERVICES, server)
        return server

    bound: list[str] = []
    servers: list[grpc.aio.Server] = []
    tcp = [listener for listener in addresses if not listener.is_unix]
    unix = [listener for listener in addresses if listener.is_unix]
    if tcp:
        server = grpc_server(AuthInterceptor(authenticator, audit))
        tls = ReloadingCredentials(config.server.tls) if config.server.tls else None
        for listener in tcp:
            try:
                port = (server.add_secure_port(listener.address, tls.credentials) if tls
                        else server.add_insecure_port(listener.address))
            except RuntimeError as exc:
                raise StartupError(f"cannot listen on {listener.address}: {exc}") from None
            bound.append(f"{listener.address.rpartition(':')[0]}:{port}")
        servers.append(server)
    relay = None
    if unix:
        uids = config.server.unix_uids
        relay = UnixRelay(set(uids) if uids is not None else {os.geteuid()}, audit)
        internal = grpc_server(AuthInterceptor(authenticator, audit, relay.uid_for))
        relay.internal_port = internal.add_insecure_port("127.0.0.1:0")
        audit.unix_relay(f"127.0.0.1:{relay.internal_port}")
        servers.append(internal)
    for server in servers:
        await server.start()
    for listener in unix:
        assert relay is not None
        try:
            await relay.listen(listener.address.removeprefix("unix:"))
        except OSError as exc:
            raise StartupError(f"cannot listen on {listener.address}: {exc}") from None
        bound.append(listener.address)
    for name in ("", *SERVICES[:3]):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", addresses=bound)
    on_ready(bound)
    await stop.wait()
    log.info("stopping", runs=exec_service.active_runs)
    await health.enter_graceful_shutdown()
    approvals.close()  # nothing ran for them: no reason to hold the stop
    exec_service.stop_all()
    if relay is not None:
        relay.close()
    await asyncio.gather(*(server.stop(SHUTDOWN_GRACE) for server in servers))
    # Calls still open at the grace were cancelled, which kills their runs: the helper's
    # reports of those deaths are what the audit records, so it must outlive them.
    if not await exec_service.wait_ended(SHUTDOWN_GRACE):
        log.warning("runs.unrecorded", runs=exec_service.active_runs)
    spawner.close()
    if jwks is not None:
        jwks.stop()
