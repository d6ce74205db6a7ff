"""The call pipeline driven whole through calls.py, with a fake sandbox."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any, cast

import pytest

from execgate.daemon.approvals import Approvals, Pending
from execgate.daemon.audit import Audit
from execgate.daemon.calls import Calls
from execgate.daemon.config import PolicyConfig
from execgate.daemon.limits import RunSlots
from execgate.daemon.model import (
    CommandPlan,
    Denial,
    DenialKind,
    Exit,
    ExitReason,
    Output,
    Principal,
    Stream,
    ToolCall,
)
from execgate.daemon.policy import Policy
from execgate.daemon.replay import Heartbeat
from execgate.daemon.sandbox import ExitStatus, Layers
from execgate.daemon.snapshot import Snapshot, build

ALICE = Principal("alice", "api_key")
BOB = Principal("bob", "api_key")
POLICY = {
    "tools": {"shell": {"type": "command", "allowed_commands": ["echo", "true"]},
              "gated": {"type": "command", "allowed_commands": ["echo"],
                        "require_approval": True}},
    "agents": {"dev": {"tools": ["shell", "gated"]}},
    "runs": {"replay_bytes": 64},
}


class _Recorder:
    """A structlog-shaped logger that keeps the events' names and fields."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def bind(self, **_: Any) -> _Recorder:
        return self

    def _record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = error = _record

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class _Job:
    def __init__(self, layers: Layers) -> None:
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self.layers = layers
        self.signals: list[int] = []

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL) and not self.exited.done():
            self.exited.set_result(ExitStatus(0, sig, 0.0, 0.0, 0))


class _Sandbox:
    """Writes ``output`` to each job's stdout; the job exits at once unless ``hold``."""

    def __init__(self, refuse: bool = False, output: bytes = b"hi\n",
                 hold: bool = False) -> None:
        self.refuse = refuse
        self.output = output
        self.hold = hold
        self.jobs: list[_Job] = []

    def layers(self, plan: CommandPlan) -> Layers:
        if self.refuse:
            raise Denial(DenialKind.SANDBOX_UNAVAILABLE, "no Landlock on this host",
                         "sandbox.filesystem")
        return Layers(landlock=False, namespaces=False, cgroup=False, view=False)

    def spawn(self, plan: CommandPlan, layers: Layers, stdin: int, stdout: int,
              stderr: int) -> _Job:
        os.write(stdout, self.output)
        job = _Job(layers)
        if not self.hold:
            job.exited.set_result(ExitStatus(0, 0, 0.0, 0.0, 0))
        self.jobs.append(job)
        return job


async def _snapshot(tmp_path: Path, **runs: object) -> Snapshot:
    (tmp_path / "workspace").mkdir(exist_ok=True)
    config = PolicyConfig.model_validate({**POLICY, "runs": {**POLICY["runs"], **runs}})
    return await build(config, Policy(config, tmp_path))


def _calls(sandbox: _Sandbox, slots: int = 4) -> tuple[Calls, _Recorder]:
    recorder = _Recorder()
    audit = Audit(recorder)
    return Calls(RunSlots(slots), cast(Any, sandbox), Approvals(
        PolicyConfig().approvals, audit), audit), recorder


async def _events(calls: Calls, run_id: str, principal: Principal = ALICE,
                  stdout_offset: int = 0) -> list[object]:
    entry = calls.find(principal, run_id, PolicyConfig().runs)
    return [e async for e in entry.read(stdout_offset) if not isinstance(e, Heartbeat)]


async def test_a_call_leaves_its_audit_events_in_the_order_of_its_steps(
        tmp_path: Path) -> None:
    calls, recorder = _calls(_Sandbox())
    snapshot = await _snapshot(tmp_path)
    admitted = await calls.admit(ALICE, snapshot, ToolCall("dev", "gated", ("echo", "hi")))

    async def approve(pending: Pending) -> None:
        await calls._approvals.decide(pending.id, True, "", pending.digest, ALICE)

    await calls.approve(admitted, approve)
    entry = calls.start(admitted)
    events = await _events(calls, entry.id)
    assert events[0] == Output(Stream.STDOUT, 0, b"hi\n")
    assert isinstance(events[-1], Exit) and events[-1].reason is ExitReason.EXITED
    assert recorder.names == ["approval.requested", "approval.approved", "run.started",
                              "run.exited"]


async def test_no_run_slot_is_held_while_an_approval_waits(tmp_path: Path) -> None:
    """The only slot goes to a call that needs nobody, while another waits for a person."""
    calls, _ = _calls(_Sandbox(), slots=1)
    snapshot = await _snapshot(tmp_path)
    waiting = await calls.admit(ALICE, snapshot, ToolCall("dev", "gated", ("echo", "hi")))
    asked: asyncio.Future[Pending] = asyncio.get_running_loop().create_future()

    async def tell(pending: Pending) -> None:
        asked.set_result(pending)

    approval = asyncio.ensure_future(calls.approve(waiting, tell))
    await asked
    quick = calls.start(await calls.admit(ALICE, snapshot, ToolCall("dev", "shell", ("true",))))
    assert isinstance((await _events(calls, quick.id))[-1], Exit)
    approval.cancel()


async def test_a_call_the_sandbox_would_refuse_is_refused_before_a_person_is_asked(
        tmp_path: Path) -> None:
    calls, recorder = _calls(_Sandbox(refuse=True))
    with pytest.raises(Denial) as refused:
        await calls.admit(ALICE, await _snapshot(tmp_path),
                    ToolCall("dev", "gated", ("echo", "hi")))
    assert refused.value.kind is DenialKind.SANDBOX_UNAVAILABLE
    assert recorder.names == ["call.denied"]


async def test_a_detached_run_goes_on_when_its_caller_leaves(tmp_path: Path) -> None:
    sandbox = _Sandbox(hold=True)
    calls, recorder = _calls(sandbox)
    admitted = await calls.admit(ALICE, await _snapshot(tmp_path),
                                 ToolCall("dev", "shell", ("true",)))
    entry = calls.start(admitted, detach=True)
    calls.left(entry, ALICE)
    assert sandbox.jobs[0].signals == []
    assert "run.detached" in recorder.names


async def test_a_run_not_detached_is_killed_when_its_caller_leaves(tmp_path: Path) -> None:
    sandbox = _Sandbox(hold=True)
    calls, _ = _calls(sandbox)
    entry = calls.start(await calls.admit(ALICE, await _snapshot(tmp_path),
                                    ToolCall("dev", "shell", ("true",))))
    calls.left(entry, ALICE)
    assert sandbox.jobs[0].signals == [signal.SIGKILL]


async def test_another_principals_run_is_not_found(tmp_path: Path) -> None:
    calls, _ = _calls(_Sandbox())
    entry = calls.start(await calls.admit(ALICE, await _snapshot(tmp_path),
                                    ToolCall("dev", "shell", ("true",))))
    with pytest.raises(Denial) as refused:
        calls.find(BOB, entry.id, PolicyConfig().runs)
    assert refused.value.kind is DenialKind.RUN_NOT_FOUND
    assert calls.visible(BOB, PolicyConfig().runs) == []


async def test_a_replay_past_its_size_keeps_the_head_and_the_tail(tmp_path: Path) -> None:
    """64 bytes of replay, read after the run: the first 16 and the last 48 of 100 are
    kept, 36 counted dropped."""
    data = bytes(range(100))
    calls, _ = _calls(_Sandbox(output=data))
    entry = calls.start(await calls.admit(ALICE, await _snapshot(tmp_path),
                                    ToolCall("dev", "shell", ("true",))))
    assert entry.pump is not None
    await entry.pump  # nobody read it while it ran
    events = await _events(calls, entry.id)
    chunks = [e for e in events if isinstance(e, Output)]
    assert [(c.offset, c.data) for c in chunks] == [(0, data[:16]), (52, data[52:])]
    assert entry.replay.dropped[Stream.STDOUT] == 36


async def test_a_reader_there_from_the_start_loses_nothing_past_the_replays_size(
        tmp_path: Path) -> None:
    data = bytes(range(100))
    calls, _ = _calls(_Sandbox(output=data))
    entry = calls.start(await calls.admit(ALICE, await _snapshot(tmp_path),
                                    ToolCall("dev", "shell", ("true",))))
    events = await _events(calls, entry.id)
    assert b"".join(e.data for e in events if isinstance(e, Output)) == data


async def test_a_read_from_a_middle_offset_gets_the_rest(tmp_path: Path) -> None:
    calls, _ = _calls(_Sandbox(output=b"0123456789"))
    entry = calls.start(await calls.admit(ALICE, await _snapshot(tmp_path),
                                    ToolCall("dev", "shell", ("true",))))
    events = await _events(calls, entry.id, stdout_offset=4)
    assert events[0] == Output(Stream.STDOUT, 4, b"456789")


async def test_over_the_running_cap_a_call_is_refused_with_its_rule(tmp_path: Path) -> None:
    calls, _ = _calls(_Sandbox(hold=True))
    snapshot = await _snapshot(tmp_path, max_running_per_principal=1)
    calls.start(await calls.admit(ALICE, snapshot, ToolCall("dev", "shell", ("true",))))
    with pytest.raises(Denial) as refused:
        calls.start(await calls.admit(ALICE, snapshot, ToolCall("dev", "shell", ("true",))))
    assert (refused.value.kind, refused.value.rule) == (
        DenialKind.RESOURCE_EXHAUSTED, "runs.max_running_per_principal")
    calls.start(await calls.admit(BOB, snapshot, ToolCall("dev", "shell", ("true",))))


async def test_a_quiet_run_sends_heartbeats_to_its_reader(tmp_path: Path) -> None:
    calls, _ = _calls(_Sandbox(hold=True))
    snapshot = await _snapshot(tmp_path, heartbeat_interval=0.01)
    entry = calls.start(await calls.admit(ALICE, snapshot, ToolCall("dev", "shell", ("true",))))
    reader = entry.read()
    assert await anext(reader) == Output(Stream.STDOUT, 0, b"hi\n")
    assert isinstance(await anext(reader), Heartbeat)
    await reader.aclose()
    entry.run.cancel()
