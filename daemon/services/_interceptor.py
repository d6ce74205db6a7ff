"""The identity step as a server interceptor: every call gets a Principal or is refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from execgate.daemon.audit import Audit
from execgate.daemon.auth import Authenticator, current_principal
from execgate.daemon.model import Denial
from execgate.daemon.services._errors import abort


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates each call before its handler runs.

    grpc.aio runs the interceptor and the handler in the call's own task, so the principal
    set here in a ContextVar is the one the handler reads, and no other call's.
    """

    def __init__(self, authenticator: Authenticator, audit: Audit) -> None:
        self._auth = authenticator
        self._audit = audit

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        try:
            principal = await self._auth.authenticate(details.method,
                                                      details.invocation_metadata)
        except Denial as denial:
            self._audit.unauthenticated(details.method, "", denial)
            return _refusing(handler, denial)
        current_principal.set(principal)
        return handler


def _refusing(handler: grpc.RpcMethodHandler, denial: Denial) -> grpc.RpcMethodHandler:
    async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
        await abort(context, denial)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
