"""The identity step as a server interceptor: every call gets a Principal or is refused."""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from execgate.daemon.audit import Audit, enter_call
from execgate.daemon.auth import AuthenticationFailed, current_principal, failure_reason
from execgate.daemon.hops import Hops, is_hop, refused
from execgate.daemon.model import Denial, DenialKind
from execgate.daemon.services._errors import abort, unchain
from execgate.daemon.snapshot import Current
from execgate.daemon.tls import certificate_identity


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates each call before its handler runs.

    The handler's behaviour is wrapped, so that authentication sees the call's context (a
    verified client certificate lives there, not in the metadata) and runs in the call's own
    task, where the principal it sets in a ContextVar is the one the handler reads.
    """

    def __init__(self, current: Current, audit: Audit,
                 unix_peer: Callable[[str], int | None] | None = None,
                 hops: Hops | None = None) -> None:
        self._current = current
        """The policy in force: each call is authenticated by, and keeps, the one current
        when it arrives."""
        self._audit = audit
        self._unix_peer = unix_peer
        """On the unix relay's internal server: the uid behind a peer, None if not relayed."""
        self._hops = hops
        """In a fleet: verifies the calls other daemons forward on a caller's behalf."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        return _wrapped(handler, details.method, self._authenticate)

    async def _authenticate(self, method: str, context: grpc.aio.ServicerContext,
                            request: Message | None) -> None:
        metadata = context.invocation_metadata() or ()
        # every audit event of this call carries it; tracing continues the caller's trace
        enter_call(method, context.peer(), *trace_context(metadata))
        try:
            if is_hop(metadata):  # another daemon of the fleet, on a caller's behalf
                if self._hops is None:
                    raise refused("this daemon is not in a fleet (server.cluster)")
                principal = self._hops.verify(method, metadata, request)
                self._audit.authenticated(principal)
                current_principal.set(principal)
                return
            uid = None
            if self._unix_peer is not None:
                uid = self._unix_peer(context.peer())
                if uid is None:
                    raise AuthenticationFailed(
                        "relay_only", "this listener serves the unix socket relay only")
            principal = await self._current.get().authenticator.authenticate(
                method, metadata,
                certificate_identity(context.auth_context()), uid,
                source=f"uid:{uid}" if uid is not None else peer_address(context.peer()))
        except Denial as denial:
            self._audit.unauthenticated(method, context.peer(), denial, failure_reason(denial))
            await abort(context, denial)
        if principal.authenticated:
            self._audit.authenticated(principal)
        current_principal.set(principal)


def trace_context(metadata: Sequence[tuple[str, str | bytes]]) -> tuple[str, str]:
    """The caller's W3C ``traceparent`` and ``tracestate`` metadata ("" when absent): where
    its trace continues, nothing more (identity never comes from metadata)."""
    found = {key: value for key, value in metadata
             if key in ("traceparent", "tracestate") and isinstance(value, str)}
    return found.get("traceparent", ""), found.get("tracestate", "")


def peer_address(peer: str) -> str:
    """The address failed authentications are counted against, from a gRPC peer string.

    The port is dropped: every connection gets a new one. An IPv6 peer counts by its /64,
    the block one host is usually given, which it could otherwise walk address by address.
    """
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer  # not an IP peer: nothing to generalise
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 caller of a dual-stack listener
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


Authenticate = Callable[[str, grpc.aio.ServicerContext, Message | None], Awaitable[None]]
Deserialize = Callable[[bytes], Any]
_UNPARSED = object()
"""Stands for a single request whose bytes did not parse: gRPC would answer UNKNOWN, quoting
the parser, before the handler ran; the wrapper refuses it after authentication instead."""


def _tolerant(deserialize: Deserialize | None) -> Deserialize | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return _UNPARSED
    return parse


def _single(request: Any) -> Message | None:
    """The request a hop's assertion was signed for: a unary call's parsed message."""
    return request if isinstance(request, Message) else None


async def _parsed(method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
    if request is _UNPARSED:
        await abort(context, Denial(DenialKind.INVALID_ARGUMENT,
                                    f"the request to {method} is not a valid message"))


def _wrapped(handler: grpc.RpcMethodHandler, method: str,
             authenticate: Authenticate) -> grpc.RpcMethodHandler:
    streaming = (handler.request_streaming, handler.response_streaming)
    field, make = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }[streaming]
    behavior = getattr(handler, field)
    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):
        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await authenticate(method, context, _single(request))
                await _parsed(method, request, context)
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError as aborted:
                unchain(aborted)  # a bare raise adds no frame (with its context) back
                raise
        wrapper = stream_out
    else:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await authenticate(method, context, _single(request))
                await _parsed(method, request, context)
                return await behavior(request, context)
            except grpc.aio.AbortError as aborted:
                unchain(aborted)
                raise
        wrapper = call
    # A stream's messages are parsed as the handler reads them; it answers for those itself.
    deserialize = (handler.request_deserializer if handler.request_streaming
                   else _tolerant(handler.request_deserializer))
    return make(wrapper, request_deserializer=deserialize,
                response_serializer=handler.response_serializer)
