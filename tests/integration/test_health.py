"""grpc-health-probe and grpcurl against a daemon that requires authentication.

Probes (Kubernetes, systemd) carry no token: health answers without one unless the policy
says otherwise. Reflection shows the whole API, so it follows ``excluded_paths``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

DEFAULT_EXCLUSIONS = TEST_POLICY.replace("    excluded_paths: [/health]\n", "")
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Auth required, ``excluded_paths`` not given."""
    d = start_daemon(tmp_path_factory.mktemp("health"), DEFAULT_EXCLUSIONS)
    yield d
    d.stop()


def check(target: str, service: str = "") -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    """What grpc-health-probe asks, with no credential."""
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-any-return]
            health_pb2.HealthCheckRequest(service=service), timeout=30).status


def list_services(target: str, token: str | None = None) -> list[str]:
    """What ``grpcurl list`` asks."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata, timeout=30)
        return [s.name for r in responses for s in r.list_services_response.service]


def test_health_answers_serving_without_a_credential(daemon: Daemon) -> None:
    assert check(daemon.target) == health_pb2.HealthCheckResponse.SERVING


def test_each_service_reports_its_health_without_a_credential(daemon: Daemon) -> None:
    assert check(daemon.target, "execgate.v1.ExecService") == (
        health_pb2.HealthCheckResponse.SERVING)


def test_health_needs_a_credential_when_excluded_paths_leaves_it_out(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, TEST_POLICY.replace("excluded_paths: [/health]",
                                                   "excluded_paths: []"))
    try:
        with pytest.raises(grpc.RpcError) as info:
            check(d.target)
    finally:
        d.stop()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_without_a_credential_is_refused(daemon: Daemon) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list_services(daemon.target)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_with_a_credential_lists_the_api(daemon: Daemon) -> None:
    assert {"execgate.v1.ExecService", "execgate.v1.AgentService",
            "execgate.v1.ApprovalService", "grpc.health.v1.Health"} <= set(
        list_services(daemon.target, API_KEY))


def test_reflection_in_excluded_paths_answers_without_a_credential(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, TEST_POLICY.replace("excluded_paths: [/health]",
                                                   f"excluded_paths: [/health, {REFLECTION}]"))
    try:
        services = list_services(d.target)
    finally:
        d.stop()
    assert "execgate.v1.ExecService" in services
