"""Requests whose bytes are not the method's message: each is the caller's mistake,
INVALID_ARGUMENT, answered only after authentication and without the parser's own words."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import API_KEY, Daemon

UNARY = ("/execgate.v1.AgentService/ListAgents", "/execgate.v1.ApprovalService/GetApproval",
         "/execgate.v1.ApprovalService/DecideApproval", "/grpc.health.v1.Health/Check")
STREAMING = ("/execgate.v1.ApprovalService/WatchApprovals",)
"""Every single-request method the daemon serves (the runs RPCs are in the fuzzer, which
accepts the UNIMPLEMENTED of a daemon without them)."""
GARBAGE = b"\xd8T~!ZD0\xb4\xf8"
"""A field tag with wire type 0 but no varint after it: protobuf's DecodeError."""


def _call(daemon: Daemon, method: str, token: str | None = API_KEY) -> grpc.RpcError:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(daemon.target) as channel:
        try:
            if method in UNARY:
                channel.unary_unary(method, request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)(
                    GARBAGE, timeout=10, metadata=metadata)
            else:
                for _ in channel.unary_stream(method, request_serializer=lambda b: b,
                                              response_deserializer=lambda b: b)(
                        GARBAGE, timeout=10, metadata=metadata):
                    pass
        except grpc.RpcError as error:
            return error
    raise AssertionError(f"{method} accepted bytes that do not parse")


@pytest.mark.parametrize("method", UNARY + STREAMING)
def test_a_request_that_does_not_parse_is_invalid_argument(daemon: Daemon, method: str) -> None:
    """Found by the protocol fuzzer: such requests ended in UNKNOWN, quoting DecodeError.
    The technique is the classic protobuf fuzzing of gRPC servers (Google's OSS-Fuzz
    grpc/protobuf targets)."""
    error = _call(daemon, method)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert "DecodeError" not in details
    assert "Unexpected" not in details


@pytest.mark.parametrize("method", UNARY[:1] + STREAMING[:1])
def test_a_request_that_does_not_parse_is_refused_as_unauthenticated_first(
        daemon: Daemon, method: str) -> None:
    """Without a credential the caller learns nothing, not even that its bytes are wrong."""
    error = _call(daemon, method, token=None)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
