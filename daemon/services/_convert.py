"""Between gRPC messages and the daemon's own types; nothing below this layer sees protobuf."""

from __future__ import annotations

from execgate.daemon.approvals import Pending
from execgate.daemon.calls import RunEntry
from execgate.daemon.model import CommandPlan, Exit, Output, Plan, RunEvent, Stream, ToolCall
from execgate.daemon.replay import Heartbeat
from execgate.daemon.sandbox import Layers
from execgate.v1 import exec_pb2

_STREAM = {Stream.STDOUT: exec_pb2.STREAM_STDOUT, Stream.STDERR: exec_pb2.STREAM_STDERR}


def tool_call(start: exec_pb2.StartCall) -> ToolCall:
    """The caller's StartCall as a ToolCall (validated later, by policy)."""
    timeout = None
    if start.HasField("timeout"):
        timeout = start.timeout.seconds + start.timeout.nanos / 1e9
    return ToolCall(agent=start.agent, tool=start.tool, argv=tuple(start.argv),
                    arguments=dict(start.arguments), cwd=start.cwd, env=dict(start.env),
                    timeout=timeout, stdin=start.stdin)


def accepted(run_id: str, plan: Plan, layers: Layers | None) -> exec_pb2.Accepted:
    """The ``accepted`` message: the run id and the exact plan, with its confinement."""
    return exec_pb2.Accepted(run_id=run_id, plan=plan_message(plan, layers))


def approval_request(pending: Pending, layers: Layers | None) -> exec_pb2.ApprovalRequest:
    """What a human is asked to decide."""
    message = exec_pb2.ApprovalRequest(
        approval_id=pending.id, prompt=pending.prompt, plan=plan_message(pending.plan, layers),
        plan_digest=pending.digest, requester=pending.requester.subject)
    message.expires_at.FromNanoseconds(round(pending.expires_at * 1e9))
    return message


def plan_message(plan: Plan, layers: Layers | None) -> exec_pb2.Plan:
    """The exact plan, with its confinement."""
    message = exec_pb2.Plan(agent=plan.agent, tool=plan.tool, executable=plan.executable)
    limits = message.limits  # a reference: protobuf copies a message passed to a constructor
    limits.output_limit_bytes = plan.limits.output_limit_bytes
    limits.timeout.FromNanoseconds(round(plan.limits.timeout * 1e9))
    if isinstance(plan, CommandPlan):
        message.argv.extend(plan.argv)
        message.cwd = str(plan.cwd)
        message.env_names.extend(sorted(plan.env))
        c = plan.confinement
        if c.cpu_time is not None:
            limits.cpu_time.FromNanoseconds(round(c.cpu_time * 1e9))
        limits.open_files = c.open_files or 0
        limits.file_size_bytes = c.file_size or 0
        if layers is not None:
            message.sandbox.CopyFrom(exec_pb2.Sandbox(
                filesystem=layers.landlock, namespaces=layers.namespaces, cgroup=layers.cgroup,
                network=c.network, run_as=c.user, view=layers.view))
            if layers.cgroup:
                limits.memory_bytes = c.memory or 0
                limits.processes = c.processes or 0
    else:
        message.cwd = str(plan.jail)
        message.argv.extend(f"{k}={v}" for k, v in sorted(plan.arguments.items())
                            if k != "content")
        if "content" in plan.arguments:
            message.argv.append(f"content=<{len(plan.arguments['content'].encode())} bytes>")
    return message


def execute_response(event: RunEvent | Heartbeat) -> exec_pb2.ExecuteResponse:
    """One event of a run on its Execute stream."""
    if isinstance(event, Output):
        return exec_pb2.ExecuteResponse(output=output(event))
    if isinstance(event, Exit):
        return exec_pb2.ExecuteResponse(exit=exit_message(event))
    return exec_pb2.ExecuteResponse(heartbeat=exec_pb2.Heartbeat())


def attach_response(event: RunEvent | Heartbeat) -> exec_pb2.AttachRunResponse:
    """One event of a run on an AttachRun stream."""
    if isinstance(event, Output):
        return exec_pb2.AttachRunResponse(output=output(event))
    if isinstance(event, Exit):
        return exec_pb2.AttachRunResponse(exit=exit_message(event))
    return exec_pb2.AttachRunResponse(heartbeat=exec_pb2.Heartbeat())


def run_info(entry: RunEntry) -> exec_pb2.RunInfo:
    """What ListRuns says of one run."""
    plan, replay = entry.plan, entry.replay
    message = exec_pb2.RunInfo(
        run_id=entry.id,
        state=exec_pb2.RUN_STATE_RUNNING if entry.exit is None else exec_pb2.RUN_STATE_EXITED,
        subject=entry.principal.subject, agent=plan.agent, tool=plan.tool,
        argv=plan_message(plan, None).argv, stdout_bytes=replay.offsets[Stream.STDOUT],
        stderr_bytes=replay.offsets[Stream.STDERR], detached=entry.detached,
        attached=replay.readers, replay_dropped_bytes=sum(replay.dropped.values()))
    message.started_at.FromNanoseconds(round(entry.started_at * 1e9))
    if entry.exit is not None:
        message.exit.CopyFrom(exit_message(entry.exit))
    return message


def output(event: Output) -> exec_pb2.Output:
    """One output chunk."""
    return exec_pb2.Output(stream=_STREAM[event.stream], offset=event.offset, data=event.data)


def exit_message(event: Exit) -> exec_pb2.Exit:
    """The final message of a run."""
    message = exec_pb2.Exit(
        reason=exec_pb2.ExitReason.Value(f"EXIT_REASON_{event.reason.name}"),
        exit_code=event.exit_code, signal=event.signal,
        message=event.message, max_rss_bytes=event.max_rss_bytes,
        stdout_bytes=event.stdout_bytes, stderr_bytes=event.stderr_bytes,
        dropped_bytes=event.dropped_bytes)
    message.wall_time.FromNanoseconds(round(event.wall_time * 1e9))
    message.user_time.FromNanoseconds(round(event.user_time * 1e9))
    message.system_time.FromNanoseconds(round(event.system_time * 1e9))
    return message

