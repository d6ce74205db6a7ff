"""Runs across a fleet: which host holds a run, and calls proxied to that host.

A run's id names its host (``HEX@HOST_ID``), so any host knows where a run is from its id
alone. Each run is also recorded in Redis as ``NS:run:RUN_ID`` -> JSON {host, subject,
method, state}, written before its id reaches the caller, marked exited when it ends,
deleted when it is forgotten: once its host is gone, the record says whose the run was
(only they learn it was LOST). Its TTL is its longest possible life
plus its retention, so a record whose host died goes too.

``AttachRun``, ``CancelRun`` and ``SignalRun`` for a run another host holds are proxied to
that host over the daemons' own gRPC, as the caller (``execgate.daemon.hops``); ``ListRuns``
asks every live host. Proxying, not redirecting: callers behind one balanced address (a
Service, a load balancer) cannot pick the host they reach.

A host whose lease (``server.cluster.lease``) expired is gone: its runs are LOST, answered
as NOT_FOUND naming the host and the lease (rule ``server.cluster.lease``), never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from redis.exceptions import RedisError

from execgate.daemon.access import rule_matches
from execgate.daemon.calls import RunEntry
from execgate.daemon.cluster._cluster import Cluster, cause_of
from execgate.daemon.config import RunsConfig
from execgate.daemon.hops import Hops
from execgate.daemon.model import Denial, DenialKind, Principal
from execgate.v1 import exec_pb2, exec_pb2_grpc

LEASE_RULE = "server.cluster.lease"
SETTLING = 5.0
"""Seconds past a run's deadline its record is kept for: the kill grace and reaping."""
MAX_PENDING_WRITES = 10_000
"""Registry writes waiting for Redis; past it (Redis hung) they are dropped: every record
expires by itself, and the run goes on."""
REGISTER_WAIT = 2.0
"""Seconds a new run's caller waits for its record at most (Redis's own command timeout)."""
LINGER = 0.1
"""Seconds an end or a forgetting waits for a registration to share its round trip (an end
only shortens a record's TTL to the run's retention; its host tells its exit)."""
HOP_DEADLINE = 5.0
"""Seconds a cancel, signal or list forwarded to another host may take: a hung peer must not
hang the caller (nor, for ListRuns, every caller of every host)."""
M = TypeVar("M", bound=Message)
_HOST_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
"""A host id as ``server.cluster.host_id`` allows: a run id naming anything else is unknown."""
_Write = tuple[str, str | None, float, bool]
"""A registry write: key, record (None deletes it), seconds it lives, only if it exists."""
log = structlog.get_logger()


class FleetRuns:
    """This host's part in the fleet's registry of runs, and its calls to the others."""

    def __init__(self, cluster: Cluster, hops: Hops) -> None:
        self._cluster = cluster
        self.hops = hops
        """The fleet's assertions: made for calls to other hosts, verified on this one."""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._writes: asyncio.Queue[tuple[_Write | None, asyncio.Future[None] | None]] = (
            asyncio.Queue(MAX_PENDING_WRITES))
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def joining(cls, cluster: Cluster) -> FleetRuns:
        """This host's part, signing with the secret in ``server.cluster.key_env`` (which
        preflight has checked is set)."""
        secret = os.environ[cluster.config.key_env].encode()
        return cls(cluster, Hops(secret, cluster.host_id))

    # -- the registry: this host's runs --------------------------------------------------

    def new_id(self) -> str:
        """A new run's id, naming this host: any host finds the run's host in its id."""
        return f"{uuid.uuid4().hex}@{self._cluster.host_id}"

    async def registered(self, entry: RunEntry) -> None:
        """Record a run just started (before its id reaches the caller: once its host is
        gone, the record says whose it was). Redis down or hung: the run goes on."""
        life = entry.plan.limits.timeout + SETTLING + entry.runs.retention
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue((self._key(entry.id), self._record(entry, "running"), life, False), done)
        try:  # behind writes a hung Redis holds up, the run is not held up with them
            await asyncio.wait_for(asyncio.shield(done), REGISTER_WAIT)
        except TimeoutError:
            log.warning("cluster.run_unregistered", run_id=entry.id,
                        detail="Redis did not answer in time: should this host die, its "
                        "run will be unknown rather than LOST")

    def ended(self, entry: RunEntry) -> None:
        """A run ended: its record lives on for its retention (if it is still there)."""
        self._queue((self._key(entry.id), self._record(entry, "exited"),
                     entry.runs.retention + SETTLING, True))

    def forgotten(self, run_id: str) -> None:
        """A run's retention passed: its record goes."""
        self._queue((self._key(run_id), None, 0.0, False))

    # -- other hosts' runs -----------------------------------------------------------------

    async def attach(self, principal: Principal, request: exec_pb2.AttachRunRequest,
                     runs: RunsConfig) -> AsyncIterator[exec_pb2.AttachRunResponse]:
        """The run's stream from the host that holds it."""
        host, address = await self._owner(principal, request.run_id, runs)
        stub = exec_pb2_grpc.ExecServiceStub(self._channel(address))
        call = stub.AttachRun(request, metadata=self.hops.metadata(
            "/execgate.v1.ExecService/AttachRun", principal, request, host))
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            raise _denial(error, host) from None
        finally:
            call.cancel()

    async def cancel(self, principal: Principal, request: exec_pb2.CancelRunRequest,
                     runs: RunsConfig) -> None:
        """Cancel a run on the host that holds it."""
        host, address = await self._owner(principal, request.run_id, runs)
        stub = exec_pb2_grpc.ExecServiceStub(self._channel(address))
        await self._unary(stub.CancelRun, "CancelRun", principal, request, host)

    async def signal(self, principal: Principal, request: exec_pb2.SignalRunRequest,
                     runs: RunsConfig) -> None:
        """Signal a run on the host that holds it."""
        host, address = await self._owner(principal, request.run_id, runs)
        stub = exec_pb2_grpc.ExecServiceStub(self._channel(address))
        await self._unary(stub.SignalRun, "SignalRun", principal, request, host)

    async def listed(self, principal: Principal) -> list[exec_pb2.RunInfo]:
        """The runs ``principal`` may see on every other live host. A host that does not
        answer is left out (its runs are back once it answers, or LOST after its lease)."""
        if principal.method == "unix":
            return []  # a unix peer's uid is an identity of its own host only
        request = exec_pb2.ListRunsRequest()

        async def ask(host_id: str, address: str) -> list[exec_pb2.RunInfo]:
            stub = exec_pb2_grpc.ExecServiceStub(self._channel(address))
            try:
                response = await self._unary(stub.ListRuns, "ListRuns", principal, request,
                                             host_id)
            except Denial as denial:
                log.warning("cluster.host_unanswered", host_id=host_id, detail=str(denial))
                return []
            return list(response.runs)

        try:
            peers = await self._peers()
        except Denial as denial:  # Redis cannot say: this host's own runs are still listed
            log.warning("cluster.peers_unknown", detail=str(denial))
            return []
        answers = await asyncio.gather(*(ask(h, a) for h, a in peers.items()))
        return [info for answer in answers for info in answer]

    # -- the daemon's lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start writing the registry."""
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def close(self) -> None:
        """Write what is waiting (for ``REGISTER_WAIT`` at most), stop writing, and close
        the channels to the other hosts."""
        if self._writer is not None:
            flushed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue(None, flushed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flushed, REGISTER_WAIT)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    # -- inside ------------------------------------------------------------------------

    def _key(self, run_id: str) -> str:
        return self._cluster.key("run", run_id)

    def _record(self, entry: RunEntry, state: str) -> str:
        return json.dumps({"host": self._cluster.host_id, "subject": entry.principal.subject,
                           "method": entry.principal.method, "state": state})

    def _queue(self, write: _Write | None, done: asyncio.Future[None] | None = None) -> None:
        """Queue ``write`` (None writes nothing: its ``done`` says what came before it is
        written)."""
        try:
            self._writes.put_nowait((write, done))
        except asyncio.QueueFull:
            log.warning("cluster.run_registry_unwritten", cause="too many writes waiting")
            if done is not None:
                done.set_result(None)

    async def _write(self) -> None:
        """One writer, so a run's start, end and forgetting land in Redis in that order. The
        writes waiting when it wakes go in one pipeline: one round trip for all of them, in
        order on one connection, each one command atomic with its TTL. An end or a
        forgetting, which nobody waits for, lingers (``LINGER``) for a registration to go
        with: a host of short runs makes one round trip a run, not two."""
        while True:
            batch = await self._batch()
            try:
                async with self._cluster.redis.pipeline(transaction=False) as pipe:
                    for write, _ in batch:
                        if write is None:
                            continue
                        key, record, seconds, existing = write
                        if record is None:
                            pipe.delete(key)
                        else:
                            pipe.set(key, record, px=int(seconds * 1000), xx=existing)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("cluster.run_registry_unwritten", cause=cause_of(exc))
            for _, done in batch:
                if done is not None and not done.done():
                    done.set_result(None)

    async def _batch(self) -> list[tuple[_Write | None, asyncio.Future[None] | None]]:
        """The writes to send now: every one waiting, once one is awaited or ``LINGER`` has
        passed since the first."""
        batch = [await self._writes.get()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER):
                while batch[-1][1] is None:  # Queue.get gives up cleanly when cancelled
                    batch.append(await self._writes.get())
        while not self._writes.empty():
            batch.append(self._writes.get_nowait())
        return batch

    async def _owner(self, principal: Principal, run_id: str,
                     runs: RunsConfig) -> tuple[str, str]:
        """The id and address of the live host holding ``run_id`` (its id names it);
        raises Denial: NOT_FOUND for a run no other host holds (or the caller may not see),
        NOT_FOUND naming the host for a LOST one, UNAVAILABLE when Redis cannot say."""
        unknown = Denial(DenialKind.RUN_NOT_FOUND,
                         f"no run {run_id[:40]!r} (unknown, not yours, or past its "
                         "retention)", "runs.retention")
        host = run_id.rpartition("@")[2] if "@" in run_id else ""
        if (principal.method == "unix"  # a uid is an identity of its own host only
                or not _HOST_ID.fullmatch(host) or host == self._cluster.host_id
                or len(run_id) > 300):  # ours are 33 characters and a host id
            raise unknown
        with self._cluster.reaching("finding a run held by another host"):
            address, stored = await self._cluster.redis.mget(
                self._cluster.key("host", host), self._key(run_id))
        if address is not None:
            return host, _text(address)  # the owner decides who may see its run
        record = _decoded(stored)
        owner = Principal(subject=record.get("subject", ""), method=record.get("method", ""))
        if record.get("host") != host or not _may_see(principal, owner, runs):
            raise unknown
        raise Denial(DenialKind.RUN_NOT_FOUND,
                     f"run {run_id!r} is LOST: its host {host!r} has not been heard from "
                     f"for its lease ({self._cluster.config.lease:g}s); its output and "
                     "exit are gone with it", LEASE_RULE)

    async def _peers(self) -> dict[str, str]:
        """Live hosts other than this one: host id -> address."""
        prefix = self._cluster.key("host", "")
        with self._cluster.reaching("listing the runs of other hosts"):
            keys = [key async for key in self._cluster.redis.scan_iter(
                match=f"{prefix}*", count=1000)]
            addresses = await self._cluster.redis.mget(keys) if keys else []
        return {host: _text(address)
                for key, address in zip(keys, addresses, strict=True)
                if address is not None and
                (host := _text(key)[len(prefix):]) != self._cluster.host_id}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel

    async def _unary(self, method: Callable[..., Awaitable[M]], name: str,
                     principal: Principal, request: Message, host: str) -> M:
        try:
            return await method(request, timeout=HOP_DEADLINE, metadata=self.hops.metadata(
                f"/execgate.v1.ExecService/{name}", principal, request, host))
        except grpc.aio.AioRpcError as error:
            raise _denial(error, host) from None


def _may_see(principal: Principal, owner: Principal, runs: RunsConfig) -> bool:
    """As ``Calls`` decides for its own runs: only a LOST run's own principal (or an
    operator) learns that it was lost; for anyone else it never existed."""
    return ((principal.method, principal.subject) == (owner.method, owner.subject)
            or any(rule_matches(rule, principal) for rule in runs.operators))


def _denial(error: grpc.aio.AioRpcError, host: str) -> Denial:
    """The owner's refusal as its Denial; a host that did not answer as UNAVAILABLE."""
    trailing = dict(error.trailing_metadata() or ())
    kind = trailing.get("execgate-error")
    if isinstance(kind, str) and kind in DenialKind._value2member_map_:
        rule = trailing.get("execgate-rule")
        details = error.details() or ""
        suffix = f" (rule: {rule})" if rule else ""
        return Denial(DenialKind(kind), details.removesuffix(suffix),
                      rule if isinstance(rule, str) else "")
    return Denial(DenialKind.UNAVAILABLE,
                  f"host {host!r}, which holds this run, did not answer; retry (its runs "
                  "are LOST if it stays away past its lease)", LEASE_RULE)


def _decoded(stored: bytes | str | None) -> dict[str, str]:
    """A run's record; one that is missing, or not one a host wrote, is no record."""
    try:
        record = json.loads(stored) if stored is not None else {}
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if isinstance(k, str) and isinstance(v, str)}


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
