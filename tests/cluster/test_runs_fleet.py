"""Runs across a fleet: a run held by one host is listed, attached, signalled and cancelled
through any other (proxied to its host as the caller); a host that dies leaves its runs LOST
once its lease expires; a forwarded call's assertion is checked by the host that answers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from execgate.client import Exited, ExitReason, NotFoundError, OutputChunk, Started
from execgate.daemon.hops import Hops
from execgate.daemon.model import Principal
from execgate.v1 import exec_pb2, exec_pb2_grpc
from tests.cluster.conftest import CLUSTER_KEY, Fleet, RedisServer, cluster_policy
from tests.conftest import API_KEY, Daemon, start_daemon

COUNT = 30000
NUMBERS = "".join(f"{n}\n" for n in range(1, COUNT + 1)).encode()
"""What the run prints before it waits: 168 KiB, more than one chunk."""
LONG_RUN = ["sh", "-c", f"seq 1 {COUNT}; sleep 60"]
ATTACH = "/execgate.v1.ExecService/AttachRun"
TESTER = Principal(subject="tester", method="api_key")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_hosts(root: Path, redis_server: RedisServer, count: int = 3,
                lease: str = "3s") -> Fleet:
    """``count`` daemons sharing ``redis_server``, each advertising a port of its own."""
    fleet = Fleet()
    try:
        for n in range(1, count + 1):
            port = _free_port()
            (root / f"host-{n}").mkdir()
            fleet.hosts.append(start_daemon(
                root / f"host-{n}", cluster_policy(redis_server.url, f"host-{n}"),
                env={"EXECGATE_CLUSTER_KEY": CLUSTER_KEY, "LEASE": lease,
                     "ADVERTISE": f"127.0.0.1:{port}"},
                extra_args=("--listen", f"127.0.0.1:{port}")))
    except BaseException:
        fleet.stop()
        raise
    return fleet


@pytest.fixture
def hosts(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Daemon]]:
    fleet = start_hosts(tmp_path, redis_server)
    yield fleet.hosts
    fleet.stop()


def _stdout_until(events: Iterator[object], size: int) -> bytes:
    """stdout from offset 0 on, checking each chunk's offset, until ``size`` bytes."""
    data = b""
    for event in events:
        if isinstance(event, OutputChunk) and event.stream == "stdout":
            assert event.offset == len(data)
            data += event.data
            if len(data) >= size:
                return data
        assert not isinstance(event, Exited), event
    raise AssertionError("the stream ended early")


def test_a_run_is_attached_on_another_host_from_offset_0_and_cancelled_from_a_third(
        hosts: list[Daemon]) -> None:
    one, two, three = hosts
    run = one.client().start(LONG_RUN, agent="dev")
    events = two.client().attach(run.id)
    first = next(events)
    assert isinstance(first, Started) and first.run_id == run.id
    assert _stdout_until(events, len(NUMBERS)) == NUMBERS
    three.client().cancel(run.id)
    ends = [e for e in events if isinstance(e, Exited)]
    assert [e.reason for e in ends] == [ExitReason.CANCELLED]


def test_a_run_whose_record_is_gone_is_still_reached_through_its_id(
        hosts: list[Daemon], redis_server: RedisServer) -> None:
    """The id names the host: a record Redis lost (evicted, flushed) does not lose the run."""
    one, two, _ = hosts
    run = one.client().start(LONG_RUN, agent="dev")
    with redis.Redis(unix_socket_path=str(redis_server.socket)) as r:
        assert r.delete(f"execgate:run:{run.id}") == 1
    events = two.client().attach(run.id)
    assert _stdout_until(events, len(NUMBERS)) == NUMBERS
    two.client().cancel(run.id)
    assert [e.reason for e in events if isinstance(e, Exited)] == [ExitReason.CANCELLED]


def test_list_runs_on_one_host_shows_the_runs_of_the_others(hosts: list[Daemon]) -> None:
    one, two, _ = hosts
    run = one.client().start(LONG_RUN, agent="dev")
    listed = {info.run_id: info for info in two.client().runs()}
    assert run.id in listed
    assert listed[run.id].argv == tuple(LONG_RUN)
    one.client().cancel(run.id)


def test_with_redis_down_a_host_still_lists_its_own_runs(
        hosts: list[Daemon], redis_server: RedisServer) -> None:
    """Redis cannot say which hosts live: the others' runs are left out, this host's are
    not."""
    one = hosts[0]
    run = one.client().start(LONG_RUN, agent="dev")
    redis_server.kill()
    assert run.id in {info.run_id for info in one.client().runs()}
    one.client().cancel(run.id)


def test_a_run_is_signalled_through_another_host(hosts: list[Daemon]) -> None:
    one, two, _ = hosts
    run = one.client().start(["sh", "-c", "trap 'echo got; exit 3' USR1; echo ready; "
                                          "while :; do sleep 0.1; done"], agent="dev")
    events = one.client().attach(run.id)
    assert _stdout_until(events, len(b"ready\n")) == b"ready\n"
    two.client().signal(run.id, 10)  # SIGUSR1
    ends = [e for e in events if isinstance(e, Exited)]
    assert [e.exit_code for e in ends] == [3]


def test_a_run_id_names_its_host_and_its_record_expires(
        hosts: list[Daemon], redis_server: RedisServer) -> None:
    """The id ends in ``@HOST_ID``; the record, written shortly after the run starts, names
    its host, is marked exited when the run ends, and has a TTL."""
    first = hosts[0].client().run(["true"], agent="dev")
    assert first.run_id.endswith("@host-1")
    key = f"execgate:run:{first.run_id}"
    with redis.Redis(unix_socket_path=str(redis_server.socket)) as r:
        deadline, record = time.monotonic() + 10, {}
        while record.get("state") != "exited" and time.monotonic() < deadline:
            time.sleep(0.02)  # the registry writes in batches, a tenth of a second apart
            record = json.loads(r.get(key) or "{}")
        assert (record["host"], record["state"]) == ("host-1", "exited")
        assert r.pttl(key) > 0


def test_a_run_whose_command_reads_no_stdin_still_streams_its_output(
        hosts: list[Daemon]) -> None:
    """In a fleet the run waits for its record, while its whole stdin arrives: stdin the
    pipe cannot hold yet must not hold up the run's accepted and output."""
    with grpc.insecure_channel(hosts[0].target) as channel:
        call = exec_pb2_grpc.ExecServiceStub(channel).Run(
            exec_pb2.RunRequest(start=exec_pb2.StartCall(
                agent="dev", argv=["sh", "-c", "echo ready; sleep 60"]), stdin=b"x" * 2**20),
            metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=30)
        seen = b""
        for batch in call:
            seen += b"".join(e.output.data for e in batch.events if e.HasField("output"))
            if seen == b"ready\n":
                break
        call.cancel()
    assert seen == b"ready\n"


def test_a_stopping_host_writes_its_runs_last_records(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """A run's end lingers to share a round trip; a host that stops writes it first."""
    fleet = start_hosts(tmp_path, redis_server, count=1)
    run_id = fleet.hosts[0].client().run(["true"], agent="dev").run_id
    fleet.stop()
    with redis.Redis(unix_socket_path=str(redis_server.socket)) as r:
        assert json.loads(r.get(f"execgate:run:{run_id}") or "{}").get("state") == "exited"


def test_an_unknown_run_is_not_found_on_every_host(hosts: list[Daemon]) -> None:
    with pytest.raises(NotFoundError) as info:
        hosts[1].client().cancel("0" * 32)
    assert info.value.rule == "runs.retention"


def test_the_runs_of_a_killed_host_are_lost_after_its_lease(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Host 1 is SIGKILLed mid-run; once its lease key expires (Redis says so), an attach
    through host 2 is NOT_FOUND naming host 1 and the lease."""
    fleet = start_hosts(tmp_path, redis_server, count=2, lease="2s")
    try:
        one, two = fleet.hosts
        run = one.client().start(LONG_RUN, agent="dev")
        watcher = redis.Redis(unix_socket_path=str(redis_server.socket))
        watcher.config_set("notify-keyspace-events", "Ex")
        expired = watcher.pubsub()
        expired.subscribe("__keyevent@0__:expired")
        one.proc.kill()
        one.proc.wait()
        for message in expired.listen():
            if message["data"] == b"execgate:host:host-1":
                break
        with pytest.raises(NotFoundError) as info:
            next(two.client().attach(run.id))
        assert "LOST" in info.value.message and "host-1" in info.value.message
        assert info.value.rule == "server.cluster.lease"
        expired.close()
        watcher.close()
    finally:
        fleet.stop()


def _attach_with(target: str, hops: Hops, run_id: str = "0" * 32,
                 signed_for: str = "host-1") -> grpc.StatusCode:
    """AttachRun on ``target`` with a hop ``hops`` made for host ``signed_for``."""
    request = exec_pb2.AttachRunRequest(run_id=run_id)
    with grpc.insecure_channel(target) as channel:
        call = exec_pb2_grpc.ExecServiceStub(channel).AttachRun(
            request, metadata=hops.metadata(ATTACH, TESTER, request, signed_for), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
    return info.value.code()  # type: ignore[no-any-return]


def test_a_hop_signed_with_another_key_is_refused(hosts: list[Daemon]) -> None:
    forged = Hops(b"not-the-fleet-key-0123456789", "host-2")
    assert _attach_with(hosts[0].target, forged) == grpc.StatusCode.UNAUTHENTICATED


def test_an_expired_hop_is_refused(hosts: list[Daemon]) -> None:
    stale = Hops(CLUSTER_KEY.encode(), "host-2", clock=lambda: time.time() - 3600)
    assert _attach_with(hosts[0].target, stale) == grpc.StatusCode.UNAUTHENTICATED


def test_a_hop_made_for_another_request_is_refused(hosts: list[Daemon]) -> None:
    """The assertion covers the request: one captured for a run does not serve another."""
    signed_for = exec_pb2.AttachRunRequest(run_id="a" * 32)
    metadata = Hops(CLUSTER_KEY.encode(), "host-2").metadata(ATTACH, TESTER, signed_for,
                                                             "host-1")
    with grpc.insecure_channel(hosts[0].target) as channel:
        call = exec_pb2_grpc.ExecServiceStub(channel).AttachRun(
            exec_pb2.AttachRunRequest(run_id="b" * 32), metadata=metadata, timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_hop_made_for_another_host_is_refused(hosts: list[Daemon]) -> None:
    """The assertion names the host it is for: one captured on its way to host 3 cannot be
    replayed to host 1."""
    fleet = Hops(CLUSTER_KEY.encode(), "host-2")
    assert (_attach_with(hosts[0].target, fleet, signed_for="host-3")
            == grpc.StatusCode.UNAUTHENTICATED)


def test_a_valid_hop_is_answered_from_the_hosts_own_runs(hosts: list[Daemon]) -> None:
    """Signed right, for a run it does not hold: NOT_FOUND, never forwarded again."""
    fleet = Hops(CLUSTER_KEY.encode(), "host-2")
    assert _attach_with(hosts[0].target, fleet) == grpc.StatusCode.NOT_FOUND


def test_a_hop_to_a_daemon_outside_a_fleet_is_refused(daemon: Daemon) -> None:
    fleet = Hops(CLUSTER_KEY.encode(), "host-2")
    assert _attach_with(daemon.target, fleet) == grpc.StatusCode.UNAUTHENTICATED
