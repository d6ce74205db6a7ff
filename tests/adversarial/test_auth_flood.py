"""A flood of guessed credentials is slowed per peer address and starves nobody else."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from execgate.v1 import agents_pb2, agents_pb2_grpc
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

FLOOD = 150
UNIX_POLICY = TEST_POLICY.replace("server:\n", "server:\n  unix_uids: [UID]\n").replace(
    "UID", str(os.geteuid()))


@pytest.fixture
def flooded(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon on 127.0.0.1, [::1] and a unix socket, after a flood from 127.0.0.1."""
    d = start_daemon(tmp_path, UNIX_POLICY, extra_args=(
        "--listen", "[::1]:0", "--listen", f"unix:{tmp_path / 'execgate.sock'}"))
    yield d
    d.stop()


def list_agents(target: str, token: str | None) -> grpc.StatusCode:
    """The status of one ListAgents call on a fresh connection (so from a fresh port)."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(target) as channel:
        try:
            agents_pb2_grpc.AgentServiceStub(channel).ListAgents(
                agents_pb2.ListAgentsRequest(), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def flood(target: str) -> list[grpc.StatusCode]:
    return [list_agents(target, f"wrong-{i}") for i in range(FLOOD)]


def ipv6_target(daemon: Daemon) -> str:
    """The daemon's [::1] address, from its ``serving`` log line."""
    for line in daemon.stderr_lines:
        if line.startswith("{") and (record := json.loads(line)).get("event") == "serving":
            return next(a for a in record["addresses"] if a.startswith("[::1]:"))
    raise AssertionError("the daemon did not log its addresses")


def test_a_flood_of_wrong_tokens_is_refused_after_ten_failures(flooded: Daemon) -> None:
    statuses = flood(flooded.target)
    assert statuses[:10] == [grpc.StatusCode.UNAUTHENTICATED] * 10
    assert set(statuses[10:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_the_refusal_names_the_rule(flooded: Daemon) -> None:
    flood(flooded.target)
    with grpc.insecure_channel(flooded.target) as channel, pytest.raises(grpc.RpcError) as info:
        agents_pb2_grpc.AgentServiceStub(channel).ListAgents(
            agents_pb2.ListAgentsRequest(), metadata=(("authorization", "Bearer wrong"),))
    assert "server.auth.max_failed_attempts" in info.value.details()
    assert ("execgate-rule", "server.auth.max_failed_attempts") in (
        info.value.trailing_metadata() or ())


def test_a_correct_token_from_another_address_is_unaffected(flooded: Daemon) -> None:
    flood(flooded.target)
    assert list_agents(ipv6_target(flooded), API_KEY) == grpc.StatusCode.OK


def test_a_correct_token_from_the_flooding_address_waits_out_the_window(
        flooded: Daemon) -> None:
    """While an address is locked its credentials are not checked: a right guess must look
    like a wrong one, or the lock would be an oracle that does not slow guessing."""
    flood(flooded.target)
    assert list_agents(flooded.target, API_KEY) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_flooding_address_can_still_check_health_without_a_credential(
        flooded: Daemon) -> None:
    flood(flooded.target)
    with grpc.insecure_channel(flooded.target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_a_unix_peer_is_limited_by_its_uid(flooded: Daemon, tmp_path: Path) -> None:
    socket = f"unix:{tmp_path / 'execgate.sock'}"
    statuses = flood(socket)
    assert statuses[:10] == [grpc.StatusCode.UNAUTHENTICATED] * 10
    assert set(statuses[10:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_a_flooding_unix_peer_still_calls_by_its_uid_alone(flooded: Daemon,
                                                           tmp_path: Path) -> None:
    """The peer's uid comes from the kernel, not from a guess: the lock does not touch it."""
    socket = f"unix:{tmp_path / 'execgate.sock'}"
    flood(socket)
    assert list_agents(socket, None) == grpc.StatusCode.OK


def test_a_unix_flood_does_not_lock_tcp_callers(flooded: Daemon, tmp_path: Path) -> None:
    flood(f"unix:{tmp_path / 'execgate.sock'}")
    assert list_agents(flooded.target, API_KEY) == grpc.StatusCode.OK


def test_the_limit_is_configurable(tmp_path: Path) -> None:
    policy = TEST_POLICY.replace("    excluded_paths:", "    max_failed_attempts: 3\n"
                                 "    failed_attempts_window: 1h\n    excluded_paths:")
    d = start_daemon(tmp_path, policy)
    try:
        statuses = [list_agents(d.target, "wrong") for _ in range(5)]
    finally:
        d.stop()
    assert statuses == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
