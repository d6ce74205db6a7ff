"""Approvals shared by three real daemons through a real Redis: asked on one host, seen and
decided on any, used once across the fleet, expired fleet-wide, refused without Redis."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from execgate.client import (
    ApprovalDeniedError,
    ApprovalRequested,
    Client,
    NotFoundError,
    RPCError,
)
from tests.cluster.conftest import Fleet, Partition, RedisServer, start_fleet
from tests.conftest import Daemon

APPROVER_KEY = "approver-key-0123456789"

POLICY = """\
version: "2"
approvals:
  timeout: ${APPROVAL_TIMEOUT:-60s}
  approvers: [{subject: approver}]
tools:
  shell:
    type: command
    allowed_commands: [sh, echo]
    require_approval_for: [sh]
    approval_prompt: "Run {command}?"
agents:
  dev: {tools: [shell]}
server:
  auth:
    enabled: true
    api_keys:
      - {name: caller, key: "${TEST_API_KEY}"}
      - {name: approver, key: "APPROVER_KEY"}
sandbox: {cgroup: optional}
logger: {level: info, format: json}
""".replace("APPROVER_KEY", APPROVER_KEY)
APPEND = "echo once >> ran.txt"


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    started = start_fleet(tmp_path, redis_server, policy=POLICY)
    yield started
    started.stop()


def in_background(fn: Callable[[], object]) -> tuple[threading.Thread, queue.Queue[object]]:
    out: queue.Queue[object] = queue.Queue()

    def run() -> None:
        try:
            out.put(fn())
        except Exception as exc:
            out.put(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def ask(host: Daemon, command: str = APPEND) -> tuple[threading.Thread, queue.Queue[object]]:
    """A caller on ``host`` runs ``sh -c command`` and leaves the decision to an approver."""
    def call() -> object:
        with host.client() as c:
            return c.run(["sh", "-c", command], agent="dev", on_approval=lambda r: None)
    return in_background(call)


def pending_on(host: Daemon, command: str = APPEND) -> ApprovalRequested:
    """The approver's view, through ``host``, of the request to run ``command``."""
    with Client(host.target, token=APPROVER_KEY) as approver:
        for event in approver.watch_approvals():
            if isinstance(event, ApprovalRequested) and event.plan.argv[-1] == command:
                return event
    raise AssertionError("the watch ended without the request")


def decide_on(host: Daemon, request: ApprovalRequested, approve: bool) -> None:
    with Client(host.target, token=APPROVER_KEY) as approver:
        approver.decide_approval(request, approve)


def test_asked_on_host_1_listed_on_host_2_decided_on_host_3_runs_on_host_1_once(
        fleet: Fleet) -> None:
    host1, host2, host3 = fleet.hosts
    thread, out = ask(host1)
    request = pending_on(host2)
    assert request.requester == "caller" and request.prompt == f"Run sh -c '{APPEND}'?"
    decide_on(host3, request, True)
    thread.join()
    result = out.get()
    assert getattr(result, "exit_code", result) == 0
    assert (host1.workspace / "ran.txt").read_text() == "once\n"
    assert not (host2.workspace / "ran.txt").exists()
    assert not (host3.workspace / "ran.txt").exists()
    assert len(host1.audit("run.started")) == 1
    assert host1.audit("approval.approved", approval_id=request.approval_id,
                       decider="approver")


def test_a_decision_replayed_on_another_host_is_refused(fleet: Fleet) -> None:
    host1, host2, host3 = fleet.hosts
    thread, out = ask(host1)
    request = pending_on(host2)
    decide_on(host3, request, True)
    thread.join()
    assert getattr(out.get(), "exit_code", None) == 0
    for host in (host2, host3, host1):
        with pytest.raises(NotFoundError):
            decide_on(host, request, False)
    assert (host1.workspace / "ran.txt").read_text() == "once\n"


def test_two_hosts_deciding_at_once_make_exactly_one_decision(fleet: Fleet) -> None:
    """The compare-and-set in Redis lets one of two simultaneous decisions through."""
    host1, host2, host3 = fleet.hosts
    thread, out = ask(host1)
    request = pending_on(host1)
    barrier = threading.Barrier(2)

    def decide(host: Daemon, approve: bool) -> object:
        with Client(host.target, token=APPROVER_KEY) as approver:
            barrier.wait()
            approver.decide_approval(request, approve)
        return approve

    deciders = [in_background(lambda: decide(host2, True)),
                in_background(lambda: decide(host3, False))]
    outcomes = []
    for decider, answer in deciders:
        decider.join()
        outcomes.append(answer.get())
    assert sum(isinstance(o, NotFoundError) for o in outcomes) == 1
    thread.join()
    result = out.get()
    if True in outcomes:
        assert getattr(result, "exit_code", None) == 0
        assert (host1.workspace / "ran.txt").read_text() == "once\n"
    else:
        assert isinstance(result, RPCError)
        assert not (host1.workspace / "ran.txt").exists()


def test_an_expired_request_is_gone_on_every_host(tmp_path: Path,
                                                   redis_server: RedisServer) -> None:
    fleet = start_fleet(tmp_path, redis_server, policy=POLICY,
                        env={"APPROVAL_TIMEOUT": "2s"})
    try:
        host1, host2, host3 = fleet.hosts
        thread, out = ask(host1)
        request = pending_on(host2)
        thread.join()
        expired = out.get()
        assert isinstance(expired, ApprovalDeniedError) and expired.error == "approval_expired"
        for host in (host2, host3):
            with pytest.raises(NotFoundError):
                decide_on(host, request, True)
        assert not (host1.workspace / "ran.txt").exists()
    finally:
        fleet.stop()


def test_without_redis_an_approval_is_neither_asked_nor_decided(
        fleet: Fleet, redis_server: RedisServer) -> None:
    """Fail closed: UNAVAILABLE naming Redis, and nothing runs."""
    host1, host2, _ = fleet.hosts
    thread, out = ask(host1)
    request = pending_on(host2)
    redis_server.kill()
    with pytest.raises(RPCError) as refused:
        decide_on(host1, request, True)
    assert refused.value.status is grpc.StatusCode.UNAVAILABLE
    assert "Redis" in str(refused.value)
    with host1.client() as c, pytest.raises(RPCError) as asked:
        c.run(["sh", "-c", "echo never >> ran.txt"], agent="dev", on_approval=lambda r: True)
    assert asked.value.status is grpc.StatusCode.UNAVAILABLE
    assert "Redis" in str(asked.value) and "server.cluster.redis_url" in str(asked.value)
    assert str(redis_server.socket) not in str(asked.value)
    with host1.client() as c:
        assert c.run(["echo", "no approval needed"], agent="dev").exit_code == 0
    host1.stop()  # the waiting call ends with its daemon, never approved
    thread.join()
    assert isinstance(out.get(), RPCError)
    assert not (host1.workspace / "ran.txt").exists()


def test_a_host_cut_off_from_redis_uses_no_approval_twice(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Host 1 loses Redis while its call waits: it cannot decide; the fleet's one decision,
    made meanwhile, reaches it once it is back, and nothing can decide again."""
    partition = Partition(redis_server)
    fleet = start_fleet(tmp_path, redis_server, policy=POLICY, urls={1: partition.url})
    try:
        host1, host2, host3 = fleet.hosts
        thread, out = ask(host1)
        request = pending_on(host2)
        partition.cut()
        with pytest.raises(RPCError) as refused:
            decide_on(host1, request, True)
        assert refused.value.status is grpc.StatusCode.UNAVAILABLE
        decide_on(host3, request, True)
        with pytest.raises(NotFoundError):
            decide_on(host2, request, True)
        partition.heal()
        thread.join()
        assert getattr(out.get(), "exit_code", None) == 0
        with pytest.raises(NotFoundError):
            decide_on(host1, request, False)
        assert (host1.workspace / "ran.txt").read_text() == "once\n"
        assert len(host1.audit("run.started")) == 1
    finally:
        fleet.stop()
