"""Denials as gRPC statuses: the one mapping, used by every servicer and the interceptor.

The status code is for generic gRPC clients; the trailing metadata ``execgate-error`` (the
denial's kind), ``execgate-rule`` (the policy key that refused) and, for a rate limit,
``execgate-retry-after`` (seconds) are for execgate's client, which raises the matching
exception.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from execgate.daemon.model import Denial, DenialKind

STATUS = {
    DenialKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    DenialKind.AGENT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    DenialKind.TOOL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    DenialKind.POLICY_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    DenialKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    DenialKind.COMMAND_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    DenialKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    DenialKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DenialKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    DenialKind.SANDBOX_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    DenialKind.APPROVAL_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    DenialKind.APPROVAL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    DenialKind.APPROVAL_EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
    DenialKind.RUN_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
}


async def abort(context: grpc.aio.ServicerContext, denial: Denial) -> NoReturn:
    """End the call with the denial's status, message and machine-readable metadata."""
    metadata = [("execgate-error", denial.kind.value), ("execgate-rule", denial.rule)]
    if denial.retry_after is not None:
        metadata.append(("execgate-retry-after", f"{denial.retry_after:.3f}"))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(STATUS[denial.kind], str(denial))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def unchain(aborted: grpc.aio.AbortError) -> None:
    """Drop what an abort's error carries once it has left the handler, before it goes
    back to gRPC.

    gRPC keeps the AbortError on the call's state. Its traceback holds every frame it passed
    through, those frames hold the call's context, and the context holds that state: a cycle
    only the cyclic collector frees, which in a big heap runs seldom. Until then each refused
    call kept its gRPC call and some fifty objects (2.7 kB of RSS per denial, by
    bench/bench_memory.py --kind denial). Its ``__context__`` (the Denial, with its own
    traceback) goes too: the status already says all of it.
    """
    aborted.__traceback__ = None
    aborted.__context__ = None
