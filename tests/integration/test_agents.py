"""Discovery and visibility (the guide's table) against a real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from execgate.client import AuthenticationError, Client, NotFoundError
from tests.conftest import Daemon, start_daemon


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with auth enabled but not required."""
    d = start_daemon(tmp_path_factory.mktemp("open"), env={"REQUIRE_AUTH": "false"})
    yield d
    d.stop()


def test_authenticated_caller_sees_public_and_internal_agents(client: Client) -> None:
    agents = {a.name: a for a in client.agents()}
    assert set(agents) == {"dev", "ops"}
    assert agents["ops"].visibility == "internal"
    assert [t.name for t in agents["dev"].tools] == [
        "shell", "read_file", "write_file", "list_directory", "grep_search"]


def test_anonymous_caller_sees_only_public_agents(open_daemon: Daemon) -> None:
    with open_daemon.client(token="") as c:
        assert [a.name for a in c.agents()] == ["dev"]


def test_internal_agent_needs_authentication_even_when_auth_is_optional(
        open_daemon: Daemon) -> None:
    with open_daemon.client(token="") as c, pytest.raises(NotFoundError):
        c.run(["true"], agent="ops")
    with open_daemon.client() as c:
        assert c.run(["true"], agent="ops").exit_code == 0


def test_public_agent_is_usable_anonymously_when_auth_is_optional(open_daemon: Daemon) -> None:
    with open_daemon.client(token="") as c:
        assert c.run(["echo", "anon"], agent="dev").stdout == b"anon\n"


def test_a_bad_credential_is_refused_even_when_auth_is_optional(open_daemon: Daemon) -> None:
    with open_daemon.client(token="wrong") as c, pytest.raises(AuthenticationError):
        c.agents()


def test_private_agent_is_never_listed_nor_callable(client: Client) -> None:
    assert "helper" not in [a.name for a in client.agents()]
    with pytest.raises(NotFoundError) as hidden:
        client.run(["true"], agent="helper")
    with pytest.raises(NotFoundError) as unknown:
        client.run(["true"], agent="no-such-agent-at-all")
    assert hidden.value.message.replace("helper", "X") == unknown.value.message.replace(
        "no-such-agent-at-all", "X")


def test_missing_credentials_are_unauthenticated(daemon: Daemon) -> None:
    with daemon.client(token="") as c, pytest.raises(AuthenticationError, match="no credentials"):
        c.run(["true"], agent="dev")


def test_health_is_served_without_credentials_when_excluded(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(daemon: Daemon) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    with grpc.insecure_channel(daemon.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(
            iter([request]), metadata=(("authorization", "Bearer test-key-0123456789"),)))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"execgate.v1.ExecService", "execgate.v1.AgentService",
            "grpc.health.v1.Health"} <= names


def test_agent_may_be_left_out_when_only_one_is_visible(open_daemon: Daemon) -> None:
    with open_daemon.client(token="") as c:
        assert c.run(["echo", "x"]).plan.agent == "dev"


def test_leaving_out_the_agent_among_several_lists_the_choices(client: Client) -> None:
    from execgate.client import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match=r"2 are available to you \(dev, ops\)"):
        client.run(["true"])


def test_working_directory_is_relative_to_the_daemons_start_directory(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        with d.client() as c:
            assert c.run(["pwd"], agent="dev").stdout.decode().strip() == str(
                (tmp_path / "workspace").resolve())
    finally:
        d.stop()
