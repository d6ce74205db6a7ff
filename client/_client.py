"""``Client`` and ``AsyncClient``: run tool calls on an execgated daemon.

    with Client() as c:  # the embedded default's address and local token, as ``execgate``
        r = c.run(["echo", "hi"])
        assert r.stdout == b"hi\\n"
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import queue
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, overload

import grpc
import grpc.experimental

from execgate.client._balancing import channel_target
from execgate.client._exceptions import (
    ApprovalDeniedError,
    CommandFailedError,
    ProtocolError,
    RPCError,
    from_rpc_error,
)
from execgate.client._handles import AsyncRunHandle, Collector, RunHandle
from execgate.client._local import read_local_token
from execgate.client._models import (
    AgentInfo,
    ApprovalDecision,
    ApprovalRequested,
    ApprovalResolved,
    Event,
    Exited,
    ExitReason,
    OutputChunk,
    Plan,
    RunInfo,
    RunResult,
    RunState,
    Sandbox,
    Started,
    TextRunResult,
    TLSConfig,
    ToolInfo,
)
from execgate.client._tracing import trace_metadata
from execgate.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    approvals_pb2,
    approvals_pb2_grpc,
    exec_pb2,
    exec_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:7878"
STDIN_CHUNK = 64 * 1024
_STREAMS = {exec_pb2.STREAM_STDOUT: "stdout", exec_pb2.STREAM_STDERR: "stderr"}
_VISIBILITY = {agents_pb2.VISIBILITY_PUBLIC: "public", agents_pb2.VISIBILITY_INTERNAL: "internal",
               agents_pb2.VISIBILITY_PRIVATE: "private"}
_TOOL_TYPES = {agents_pb2.TOOL_TYPE_COMMAND: "command", agents_pb2.TOOL_TYPE_FUNCTION: "function"}
# Match the daemon's limit, so that a large write_file content gets the daemon's answer.
# Keepalive pings every 30s (the daemon permits one per 10s, and answers within 10s) tell a
# quiet run from a dead connection, also through NATs and proxies that drop idle flows.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 4 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                    ("grpc.keepalive_time_ms", 30_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.keepalive_permit_without_calls", 0),
                    # A blocking client reads server streams (Run, AttachRun, WatchApprovals)
                    # in the calling thread, not handed over from gRPC's own: a third of a
                    # Run's client CPU (grpc.aio ignores it).
                    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
CANCEL_SECONDS = 5.0
"""How long a run() that stops early waits for the daemon to take the run's CancelRun."""
MAX_RUN_REQUEST = 4 * 1024 * 1024 - 64 * 1024
"""A Run request's bytes at most (the daemon takes messages of 4 MiB); a bigger one (its
stdin) goes on an Execute stream."""


def resolve_target(target: str | Sequence[str] | None) -> str | Sequence[str]:
    """``target``, else ``$EXECGATE_TARGET``, else the embedded default's address. A
    ``dns:///`` name or a list of addresses is balanced over its daemons (``_balancing``)."""
    return target or os.environ.get("EXECGATE_TARGET") or DEFAULT_TARGET


def resolve_token(target: str, token: str | None) -> str | None:
    """``token``, else ``$EXECGATE_TOKEN`` (empty means none), else the local token for
    ``target`` left by ``execgated serve``."""
    if token is not None:
        return token or None
    if "EXECGATE_TOKEN" in os.environ:
        return os.environ["EXECGATE_TOKEN"] or None
    return read_local_token(target)


def check_argv(argv: object) -> None:
    """Refuse a command line given as one string: argv is a list, never parsed by a shell."""
    if isinstance(argv, str | bytes):
        raise TypeError(f"argv must be a list of strings, not one string: pass "
                        f"{str(argv).split()!r} (or ['sh', '-c', ...] for a shell), "
                        f"not {argv!r}")


def start_request(argv: Sequence[str] | None, agent: str, tool: str,
                  arguments: Mapping[str, str] | None, cwd: str,
                  env: Mapping[str, str] | None, timeout: float | None,
                  stdin: bool, detach: bool = False) -> exec_pb2.ExecuteRequest:
    """The first message of an Execute stream."""
    check_argv(argv)
    start = exec_pb2.StartCall(agent=agent, tool=tool, argv=list(argv or ()),
                               arguments=dict(arguments or {}), cwd=cwd, env=dict(env or {}),
                               stdin=stdin, detach=detach)
    if timeout is not None:
        start.timeout.FromNanoseconds(round(timeout * 1e9))
    return exec_pb2.ExecuteRequest(start=start)


def run_request(start: exec_pb2.ExecuteRequest, stdin: object, on_approval: object,
                detach: bool) -> exec_pb2.RunRequest | None:
    """The one message of a Run call for ``start``; None when the call takes an Execute
    stream: a callback to ask, stdin to stream, a detached run, or too big a request."""
    if (on_approval is not None or detach
            or not (stdin is None or isinstance(stdin, bytes))):
        return None
    request = exec_pb2.RunRequest(start=start.start, stdin=stdin or b"")
    return request if request.ByteSize() <= MAX_RUN_REQUEST else None


def execute_instead(error: RPCError) -> bool:
    """Whether a Run call refused with ``error`` (before anything ran) is one an Execute
    stream can still make: the daemon has no Run (an older one), or the policy asks a person,
    which only an Execute stream can wait for (under four eyes an approver decides, not the
    caller's own refusal)."""
    return error.status is grpc.StatusCode.UNIMPLEMENTED or (
        isinstance(error, ApprovalDeniedError) and ".require_approval" in error.rule)


def without_run_to_exit(exc: grpc.RpcError) -> bool:
    """For a RunToExit call refused before anything ran: raises the refusal unless another
    RPC can still make the call; True when the daemon has no RunToExit (take ``stream``),
    False when the policy asks a person (only an Execute stream can wait for one)."""
    error = from_rpc_error(exc)
    if not execute_instead(error):
        raise error from None
    return error.status is grpc.StatusCode.UNIMPLEMENTED


def collected(response: exec_pb2.RunToExitResponse, collector: Collector) -> bool:
    """Add a RunToExit answer's events to ``collector``; whether the run goes on (read the
    rest with AttachRun from ``collector.offsets``)."""
    for one in response.events:
        if (event := to_event(one)) is not None:
            collector.add(event)
    if response.continued and collector.started is None:
        raise ProtocolError("the daemon handed a run over without its accepted")
    return response.continued


def _seconds(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def to_plan(p: exec_pb2.Plan) -> Plan:
    """A plan message as a Plan."""
    s, lim = p.sandbox, p.limits
    return Plan(
        agent=p.agent, tool=p.tool, executable=p.executable, argv=tuple(p.argv), cwd=p.cwd,
        env_names=tuple(p.env_names), timeout=_seconds(lim.timeout),
        output_limit_bytes=lim.output_limit_bytes,
        sandbox=Sandbox(filesystem=s.filesystem, namespaces=s.namespaces, cgroup=s.cgroup,
                        network=s.network, run_as=s.run_as, view=s.view)
        if p.HasField("sandbox") else None,
        cpu_time=_seconds(lim.cpu_time) if lim.HasField("cpu_time") else None,
        memory_bytes=lim.memory_bytes, processes=lim.processes, open_files=lim.open_files,
        file_size_bytes=lim.file_size_bytes)


def to_approval(r: exec_pb2.ApprovalRequest) -> ApprovalRequested:
    """An approval request message as an event."""
    return ApprovalRequested(approval_id=r.approval_id, prompt=r.prompt, plan=to_plan(r.plan),
                             plan_digest=r.plan_digest, requester=r.requester,
                             expires_at=r.expires_at.ToNanoseconds() / 1e9)


def to_event(response: exec_pb2.ExecuteResponse | exec_pb2.AttachRunResponse) -> Event | None:
    """One daemon message as a client event; None for a heartbeat (nothing happened)."""
    kind = response.WhichOneof("response")
    if kind == "heartbeat":
        return None
    if kind == "output":
        o = response.output
        return OutputChunk(_STREAMS.get(o.stream, "stdout"), o.offset, o.data)
    if kind == "accepted":
        return Started(response.accepted.run_id, to_plan(response.accepted.plan))
    if kind == "approval_request" and isinstance(response, exec_pb2.ExecuteResponse):
        return to_approval(response.approval_request)
    if kind == "exit":
        return to_exited(response.exit)
    raise ProtocolError(f"unexpected message from the daemon: {kind}")


def to_exited(e: exec_pb2.Exit) -> Exited:
    """An exit message as Exited."""
    return Exited(
            reason=ExitReason(e.reason) if e.reason in ExitReason._value2member_map_
            else ExitReason.UNSPECIFIED, exit_code=e.exit_code, signal=e.signal,
            message=e.message, wall_time=_seconds(e.wall_time), user_time=_seconds(e.user_time),
            system_time=_seconds(e.system_time), max_rss_bytes=e.max_rss_bytes,
            stdout_bytes=e.stdout_bytes, stderr_bytes=e.stderr_bytes,
            dropped_bytes=e.dropped_bytes)


def to_run_info(r: exec_pb2.RunInfo) -> RunInfo:
    """A ListRuns entry as RunInfo."""
    known = r.state in RunState._value2member_map_
    return RunInfo(run_id=r.run_id, state=RunState(r.state) if known else RunState.UNSPECIFIED,
                   subject=r.subject, agent=r.agent, tool=r.tool,
                   argv=tuple(r.argv), started_at=r.started_at.ToNanoseconds() / 1e9,
                   stdout_bytes=r.stdout_bytes, stderr_bytes=r.stderr_bytes,
                   detached=r.detached, attached=r.attached,
                   replay_dropped_bytes=r.replay_dropped_bytes,
                   exit=to_exited(r.exit) if r.HasField("exit") else None)


def finished(result: RunResult, check: bool, text: bool,
             encoding: str | None) -> RunResult | TextRunResult:
    """``result`` as ``run`` was asked for: as text, and checked."""
    out: RunResult | TextRunResult = (result.decoded(encoding or "utf-8")
                                      if text or encoding else result)
    if check and not out.ok:
        raise CommandFailedError(out)
    return out


def to_watch_event(response: approvals_pb2.WatchApprovalsResponse,
                   ) -> ApprovalRequested | ApprovalResolved:
    """A WatchApprovals message as an event."""
    if response.WhichOneof("event") == "pending":
        return to_approval(response.pending)
    r = response.resolved
    return ApprovalResolved(approval_id=r.approval_id, outcome=r.outcome, decider=r.decider)


def _schema(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        schema = json.loads(text)
    except ValueError:
        raise ProtocolError("the daemon sent a tool input schema that is not JSON") from None
    if not isinstance(schema, dict):
        raise ProtocolError("the daemon sent a tool input schema that is not an object")
    return schema


def to_agents(response: agents_pb2.ListAgentsResponse) -> list[AgentInfo]:
    """Discovery's answer as AgentInfo."""
    return [AgentInfo(name=a.name, visibility=_VISIBILITY.get(a.visibility, "unspecified"),
                      tools=tuple(ToolInfo(name=t.name, type=_TOOL_TYPES.get(t.type, "unknown"),
                                           handler=t.handler, require_approval=t.require_approval,
                                           allowed_commands=tuple(t.allowed_commands),
                                           deny_by_default=t.deny_by_default,
                                           description=t.description,
                                           input_schema=_schema(t.input_schema))
                                  for t in a.tools))
            for a in response.agents]


Answer = bool | ApprovalDecision | None
"""An on_approval callback's answer: approve, deny, deny with a reason, or leave it to an
approver (None)."""
OnApproval = Callable[[ApprovalRequested], Answer]
AsyncOnApproval = Callable[[ApprovalRequested], Answer | Awaitable[Answer]]


def deny_without_a_callback(request: ApprovalRequested) -> ApprovalDecision:
    """What happens to an approval request when the caller gave no ``on_approval``."""
    return ApprovalDecision(False, "the client had no on_approval callback")


def decision_message(request: ApprovalRequested,
                     answer: bool | ApprovalDecision) -> exec_pb2.ExecuteRequest:
    """A callback's answer as the decision message, bound to the plan shown."""
    decision = answer if isinstance(answer, ApprovalDecision) else ApprovalDecision(answer)
    return exec_pb2.ExecuteRequest(approval=exec_pb2.ApprovalDecision(
        approval_id=request.approval_id, approve=decision.approve, reason=decision.reason,
        plan_digest=request.plan_digest))


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), STDIN_CHUNK):
        yield data[i:i + STDIN_CHUNK]


class Client:
    """A blocking client; one channel, safe to share between threads."""

    def __init__(self, target: str | Sequence[str] | None = None, *,
                 token: str | None = None, tls: TLSConfig | None = None) -> None:
        self.target, balancing = channel_target(resolve_target(target))
        token = resolve_token(self.target, token)
        self._credentials = (("authorization", f"Bearer {token}"),) if token else ()
        options = [*_CHANNEL_OPTIONS, *balancing]
        self._channel = (grpc.secure_channel(self.target, tls.credentials(), options=options)
                         if tls else grpc.insecure_channel(self.target, options=options))
        self._exec = exec_pb2_grpc.ExecServiceStub(self._channel)
        self._agents = agents_pb2_grpc.AgentServiceStub(self._channel)
        self._approvals = approvals_pb2_grpc.ApprovalServiceStub(self._channel)
        self._without_run = False
        """The daemon answered that it has no Run (an older one): run() takes Execute."""
        self._without_run_to_exit = bool(balancing)
        """run() takes stream(): the daemon answered that it has no RunToExit, or calls are
        spread over a fleet's daemons (reading on could reach another one, a hop away)."""

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Each call's metadata: the credentials, and the caller's trace context if any."""
        return self._credentials + trace_metadata()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def agents(self) -> list[AgentInfo]:
        """The agents this caller can see."""
        try:
            return to_agents(self._agents.ListAgents(agents_pb2.ListAgentsRequest(),
                                                     metadata=self._metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def stream(self, argv: Sequence[str] | None = None, *, agent: str = "", tool: str = "",
               arguments: Mapping[str, str] | None = None, cwd: str = "",
               env: Mapping[str, str] | None = None, timeout: float | None = None,
               stdin: bytes | Iterable[bytes] | None = None,
               on_approval: OnApproval | None = None, detach: bool = False,
               ) -> Iterator[Event]:
        """Run a call and yield its events as they come: Started, OutputChunks, Exited, and
        ApprovalRequested when the policy asks a human (``on_approval`` answers: True, False,
        an ApprovalDecision, or None to leave it to an approver; no callback denies).
        Leaving the loop early kills the run, unless ``detach``. Without ``on_approval``,
        ``detach`` or a stdin iterator it is one Run call, the shortest path (a quiet
        command's Started may come 50 ms late); a call the policy asks about then takes an
        Execute stream, as every call does with ``on_approval``."""
        start = start_request(argv, agent, tool, arguments, cwd, env, timeout,
                              stdin is not None, detach)
        request = run_request(start, stdin, on_approval, detach)
        if request is not None and not self._without_run:
            began = False
            try:
                for event in self._run_events(request):
                    began = True
                    yield event
                return
            except RPCError as error:
                if began or not execute_instead(error):
                    raise
                self._without_run |= error.status is grpc.StatusCode.UNIMPLEMENTED
        yield from self._execute_events(start, stdin, on_approval or deny_without_a_callback)

    def _run_events(self, request: exec_pb2.RunRequest) -> Iterator[Event]:
        call = self._exec.Run(request, metadata=self._metadata)
        try:
            for response in call:
                for one in response.events:
                    if (event := to_event(one)) is not None:
                        yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # no-op once finished; kills the run if the caller stopped reading

    def _execute_events(self, start: exec_pb2.ExecuteRequest,
                        stdin: bytes | Iterable[bytes] | None,
                        decide: OnApproval) -> Iterator[Event]:
        # The request stream stays open for the whole call: a decision may have to follow.
        outbox: queue.Queue[exec_pb2.ExecuteRequest | None] = queue.Queue()
        outbox.put(start)

        def feed(chunks: Iterable[bytes]) -> None:
            for chunk in chunks:
                outbox.put(exec_pb2.ExecuteRequest(stdin=chunk))
            outbox.put(exec_pb2.ExecuteRequest(close_stdin=exec_pb2.CloseStdin()))

        if isinstance(stdin, bytes):
            feed(_chunks(stdin))
        elif stdin is not None:  # an iterable may block (a terminal): read it on the side
            threading.Thread(target=feed, args=(stdin,), daemon=True).start()

        call = self._exec.Execute(iter(outbox.get, None), metadata=self._metadata)
        try:
            for response in call:
                event = to_event(response)
                if event is None:
                    continue
                if isinstance(event, ApprovalRequested):
                    answer = decide(event)
                    if answer is not None:
                        outbox.put(decision_message(event, answer))
                yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            outbox.put(None)
            call.cancel()  # no-op once finished; kills the run if the caller stopped reading

    @overload
    def run(self, argv: Sequence[str], *, agent: str = ..., tool: str = ..., cwd: str = ...,
            env: Mapping[str, str] | None = ..., timeout: float | None = ...,
            stdin: bytes | Iterable[bytes] | None = ..., on_approval: OnApproval | None = ...,
            check: bool = ..., text: Literal[False] = ..., encoding: None = ...,
            ) -> RunResult: ...

    @overload
    def run(self, argv: Sequence[str], *, agent: str = ..., tool: str = ..., cwd: str = ...,
            env: Mapping[str, str] | None = ..., timeout: float | None = ...,
            stdin: bytes | Iterable[bytes] | None = ..., on_approval: OnApproval | None = ...,
            check: bool = ..., text: bool = ..., encoding: str | None = ...,
            ) -> TextRunResult: ...

    def run(self, argv: Sequence[str], *, agent: str = "", tool: str = "", cwd: str = "",
            env: Mapping[str, str] | None = None, timeout: float | None = None,
            stdin: bytes | Iterable[bytes] | None = None,
            on_approval: OnApproval | None = None, check: bool = False, text: bool = False,
            encoding: str | None = None) -> RunResult | TextRunResult:
        """Run a command tool and wait for it. ``check``: raise CommandFailedError unless it
        exited 0; ``text`` (or an ``encoding``): output as str, undecodable bytes replaced.
        One RunToExit call (a run still going after a second is read on with AttachRun),
        unless ``on_approval`` or a stdin iterator is given: then ``stream``'s events."""
        check_argv(argv)
        collector = Collector()
        start = start_request(argv, agent, tool, None, cwd, env, timeout, stdin is not None,
                              False)
        request = run_request(start, stdin, on_approval, False)
        events: Iterator[Event] | None = None
        if request is not None and not self._without_run_to_exit:
            try:
                response = self._exec.RunToExit(request, metadata=self._metadata)
            except grpc.RpcError as exc:
                if without_run_to_exit(exc):
                    self._without_run_to_exit = True
                else:  # the policy asks a person: only an Execute stream can wait for one
                    events = self._execute_events(start, stdin, deny_without_a_callback)
            else:
                if collected(response, collector):
                    self._read_on(collector)
                return finished(collector.result(), check, text, encoding)
        for event in events or self.stream(argv, agent=agent, tool=tool, cwd=cwd, env=env,
                                           timeout=timeout, stdin=stdin,
                                           on_approval=on_approval):
            collector.add(event)
        return finished(collector.result(), check, text, encoding)

    def _read_on(self, collector: Collector) -> None:
        """The rest of a run RunToExit handed over, read with AttachRun from where its answer
        ended. Stopping early stops the run, as leaving a Run stream does."""
        assert collector.started is not None
        run_id = collector.started.run_id
        try:
            for event in self.attach(run_id, stdout_offset=collector.offsets["stdout"],
                                     stderr_offset=collector.offsets["stderr"]):
                collector.add(event)
        except BaseException:
            with contextlib.suppress(grpc.RpcError):
                self._exec.CancelRun(exec_pb2.CancelRunRequest(run_id=run_id),
                                     metadata=self._metadata, timeout=CANCEL_SECONDS)
            raise

    def start(self, argv: Sequence[str], *, agent: str = "", tool: str = "", cwd: str = "",
              env: Mapping[str, str] | None = None, timeout: float | None = None,
              on_approval: OnApproval | None = None) -> RunHandle:
        """Start a command that goes on in the daemon whatever becomes of this process (a
        detached run, bounded by the daemon's runs.detached_max_time); returns once it runs."""
        check_argv(argv)
        for event in self.stream(argv, agent=agent, tool=tool, cwd=cwd, env=env,
                                 timeout=timeout, on_approval=on_approval, detach=True):
            if isinstance(event, Started):
                return RunHandle(self, event.run_id)
        raise ProtocolError("the daemon ended the call without an accepted")

    def handle(self, run_id: str) -> RunHandle:
        """A handle on the run ``run_id`` (started by this process or an earlier one)."""
        return RunHandle(self, run_id)

    def attach(self, run_id: str, *, stdout_offset: int = 0,
               stderr_offset: int = 0) -> Iterator[Event]:
        """Read a run again: Started, the output from these offsets (what the daemon still
        holds, then live), then Exited. NotFoundError when the run is unknown, not this
        caller's, or past its retention."""
        call = self._exec.AttachRun(exec_pb2.AttachRunRequest(
            run_id=run_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset),
            metadata=self._metadata)
        try:
            for response in call:
                if (event := to_event(response)) is not None:
                    yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # only stops reading: the run goes on

    def runs(self) -> list[RunInfo]:
        """This caller's runs (everyone's, for an operator), going and recently ended."""
        try:
            return [to_run_info(r) for r in self._exec.ListRuns(
                exec_pb2.ListRunsRequest(), metadata=self._metadata).runs]
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def cancel(self, run_id: str) -> None:
        """Stop a run: SIGTERM to its whole tree, SIGKILL after the tool's kill grace."""
        try:
            self._exec.CancelRun(exec_pb2.CancelRunRequest(run_id=run_id),
                                 metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def signal(self, run_id: str, sig: int) -> None:
        """Send signal ``sig`` (1 to 64) to a run's process group."""
        try:
            self._exec.SignalRun(exec_pb2.SignalRunRequest(run_id=run_id, signal=sig),
                                 metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def call(self, tool: str, *, agent: str = "", timeout: float | None = None,
             on_approval: OnApproval | None = None, **arguments: str) -> RunResult:
        """Call a function tool (read_file, write_file, list_directory, grep_search)."""
        collector = Collector()
        for event in self.stream(None, agent=agent, tool=tool, arguments=arguments,
                                 timeout=timeout, on_approval=on_approval):
            collector.add(event)
        return collector.result()

    def watch_approvals(self) -> Iterator[ApprovalRequested | ApprovalResolved]:
        """Pending approvals this caller may decide (those waiting first), then news."""
        call = self._approvals.WatchApprovals(approvals_pb2.WatchApprovalsRequest(),
                                              metadata=self._metadata)
        try:
            for response in call:
                yield to_watch_event(response)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    def get_approval(self, approval_id: str) -> ApprovalRequested:
        """The pending approval ``approval_id``, with the plan it would run; raises
        NotFoundError when none is pending, PermissionDeniedError when this caller may not
        decide it."""
        try:
            return to_approval(self._approvals.GetApproval(
                approvals_pb2.GetApprovalRequest(approval_id=approval_id),
                metadata=self._metadata).approval)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def decide_approval(self, request: ApprovalRequested, approve: bool,
                        reason: str = "") -> None:
        """Approve or deny ``request`` (as watched), bound to the plan it showed."""
        try:
            self._approvals.DecideApproval(approvals_pb2.DecideApprovalRequest(
                decision=decision_message(request, ApprovalDecision(approve, reason)).approval),
                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


class AsyncClient:
    """An asyncio client; use within one event loop."""

    def __init__(self, target: str | Sequence[str] | None = None, *,
                 token: str | None = None, tls: TLSConfig | None = None) -> None:
        self.target, balancing = channel_target(resolve_target(target))
        token = resolve_token(self.target, token)
        self._credentials = (("authorization", f"Bearer {token}"),) if token else ()
        options = [*_CHANNEL_OPTIONS, *balancing]
        self._channel = (
            grpc.aio.secure_channel(self.target, tls.credentials(), options=options)
            if tls else grpc.aio.insecure_channel(self.target, options=options))
        self._exec = exec_pb2_grpc.ExecServiceStub(self._channel)
        self._agents = agents_pb2_grpc.AgentServiceStub(self._channel)
        self._approvals = approvals_pb2_grpc.ApprovalServiceStub(self._channel)
        self._without_run = False
        """The daemon answered that it has no Run (an older one): run() takes Execute."""
        self._without_run_to_exit = bool(balancing)
        """run() takes stream(): the daemon answered that it has no RunToExit, or calls are
        spread over a fleet's daemons (reading on could reach another one, a hop away)."""

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Each call's metadata: the credentials, and the caller's trace context if any."""
        return self._credentials + trace_metadata()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def agents(self) -> list[AgentInfo]:
        """The agents this caller can see."""
        try:
            return to_agents(await self._agents.ListAgents(agents_pb2.ListAgentsRequest(),
                                                           metadata=self._metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def stream(self, argv: Sequence[str] | None = None, *, agent: str = "",
                     tool: str = "", arguments: Mapping[str, str] | None = None, cwd: str = "",
                     env: Mapping[str, str] | None = None, timeout: float | None = None,
                     stdin: bytes | AsyncIterable[bytes] | None = None,
                     on_approval: AsyncOnApproval | None = None, detach: bool = False,
                     ) -> AsyncIterator[Event]:
        """Run a call and yield its events as they come: Started, OutputChunks, Exited, and
        ApprovalRequested when the policy asks a human (``on_approval``, sync or async,
        answers: True, False, an ApprovalDecision, or None to leave it to an approver; no
        callback denies). Leaving the loop early kills the run, unless ``detach``. Without
        ``on_approval``, ``detach`` or a stdin iterator it is one Run call (see
        ``Client.stream``)."""
        start = start_request(argv, agent, tool, arguments, cwd, env, timeout,
                              stdin is not None, detach)
        request = run_request(start, stdin, on_approval, detach)
        if request is not None and not self._without_run:
            began = False
            try:
                async for event in self._run_events(request):
                    began = True
                    yield event
                return
            except RPCError as error:
                if began or not execute_instead(error):
                    raise
                self._without_run |= error.status is grpc.StatusCode.UNIMPLEMENTED
        async for event in self._execute_events(start, stdin,
                                                on_approval or deny_without_a_callback):
            yield event

    async def _run_events(self, request: exec_pb2.RunRequest) -> AsyncIterator[Event]:
        call = self._exec.Run(request, metadata=self._metadata)
        try:
            async for response in call:
                for one in response.events:
                    if (event := to_event(one)) is not None:
                        yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def _execute_events(self, start: exec_pb2.ExecuteRequest,
                              stdin: bytes | AsyncIterable[bytes] | None,
                              decide: AsyncOnApproval) -> AsyncIterator[Event]:
        call = self._exec.Execute(metadata=self._metadata)
        try:
            await call.write(start)
            if isinstance(stdin, bytes):
                for chunk in _chunks(stdin):
                    await call.write(exec_pb2.ExecuteRequest(stdin=chunk))
            elif stdin is not None:
                async for chunk in stdin:
                    await call.write(exec_pb2.ExecuteRequest(stdin=chunk))
            if stdin is not None:
                await call.write(exec_pb2.ExecuteRequest(close_stdin=exec_pb2.CloseStdin()))
            async for response in call:
                event = to_event(response)
                if event is None:
                    continue
                if isinstance(event, ApprovalRequested):
                    answer = decide(event)
                    if inspect.isawaitable(answer):
                        answer = await answer
                    if answer is not None:
                        await call.write(decision_message(event, answer))
                yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    @overload
    async def run(self, argv: Sequence[str], *, agent: str = ..., tool: str = ...,
                  cwd: str = ..., env: Mapping[str, str] | None = ...,
                  timeout: float | None = ..., stdin: bytes | AsyncIterable[bytes] | None = ...,
                  on_approval: AsyncOnApproval | None = ..., check: bool = ...,
                  text: Literal[False] = ..., encoding: None = ...) -> RunResult: ...

    @overload
    async def run(self, argv: Sequence[str], *, agent: str = ..., tool: str = ...,
                  cwd: str = ..., env: Mapping[str, str] | None = ...,
                  timeout: float | None = ..., stdin: bytes | AsyncIterable[bytes] | None = ...,
                  on_approval: AsyncOnApproval | None = ..., check: bool = ...,
                  text: bool = ..., encoding: str | None = ...) -> TextRunResult: ...

    async def run(self, argv: Sequence[str], *, agent: str = "", tool: str = "",
                  cwd: str = "", env: Mapping[str, str] | None = None,
                  timeout: float | None = None,
                  stdin: bytes | AsyncIterable[bytes] | None = None,
                  on_approval: AsyncOnApproval | None = None, check: bool = False,
                  text: bool = False, encoding: str | None = None,
                  ) -> RunResult | TextRunResult:
        """Run a command tool and wait for it. ``check``: raise CommandFailedError unless it
        exited 0; ``text`` (or an ``encoding``): output as str, undecodable bytes replaced.
        One RunToExit call (a run still going after a second is read on with AttachRun),
        unless ``on_approval`` or a stdin iterator is given: then ``stream``'s events."""
        check_argv(argv)
        collector = Collector()
        start = start_request(argv, agent, tool, None, cwd, env, timeout, stdin is not None,
                              False)
        request = run_request(start, stdin, on_approval, False)
        events: AsyncIterator[Event] | None = None
        if request is not None and not self._without_run_to_exit:
            try:
                response = await self._exec.RunToExit(request, metadata=self._metadata)
            except grpc.RpcError as exc:
                if without_run_to_exit(exc):
                    self._without_run_to_exit = True
                else:  # the policy asks a person: only an Execute stream can wait for one
                    events = self._execute_events(start, stdin, deny_without_a_callback)
            else:
                if collected(response, collector):
                    await self._read_on(collector)
                return finished(collector.result(), check, text, encoding)
        async for event in events or self.stream(argv, agent=agent, tool=tool, cwd=cwd,
                                                 env=env, timeout=timeout, stdin=stdin,
                                                 on_approval=on_approval):
            collector.add(event)
        return finished(collector.result(), check, text, encoding)

    async def _read_on(self, collector: Collector) -> None:
        """The rest of a run RunToExit handed over, read with AttachRun from where its answer
        ended. Stopping early (cancelled too) stops the run, as leaving a Run stream does."""
        assert collector.started is not None
        run_id = collector.started.run_id
        try:
            async for event in self.attach(run_id, stdout_offset=collector.offsets["stdout"],
                                           stderr_offset=collector.offsets["stderr"]):
                collector.add(event)
        except BaseException:
            with contextlib.suppress(grpc.RpcError):
                await self._exec.CancelRun(exec_pb2.CancelRunRequest(run_id=run_id),
                                           metadata=self._metadata, timeout=CANCEL_SECONDS)
            raise

    async def start(self, argv: Sequence[str], *, agent: str = "", tool: str = "",
                    cwd: str = "", env: Mapping[str, str] | None = None,
                    timeout: float | None = None,
                    on_approval: AsyncOnApproval | None = None) -> AsyncRunHandle:
        """Start a command that goes on in the daemon whatever becomes of this process (a
        detached run, bounded by the daemon's runs.detached_max_time); returns once it runs."""
        check_argv(argv)
        events = self.stream(argv, agent=agent, tool=tool, cwd=cwd, env=env,
                             timeout=timeout, on_approval=on_approval, detach=True)
        try:
            async for event in events:
                if isinstance(event, Started):
                    return AsyncRunHandle(self, event.run_id)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        raise ProtocolError("the daemon ended the call without an accepted")

    def handle(self, run_id: str) -> AsyncRunHandle:
        """A handle on the run ``run_id`` (started by this process or an earlier one)."""
        return AsyncRunHandle(self, run_id)

    async def attach(self, run_id: str, *, stdout_offset: int = 0,
                     stderr_offset: int = 0) -> AsyncIterator[Event]:
        """Read a run again: Started, the output from these offsets (what the daemon still
        holds, then live), then Exited. NotFoundError when the run is unknown, not this
        caller's, or past its retention."""
        call = self._exec.AttachRun(exec_pb2.AttachRunRequest(
            run_id=run_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset),
            metadata=self._metadata)
        try:
            async for response in call:
                if (event := to_event(response)) is not None:
                    yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # only stops reading: the run goes on

    async def runs(self) -> list[RunInfo]:
        """This caller's runs (everyone's, for an operator), going and recently ended."""
        try:
            response = await self._exec.ListRuns(exec_pb2.ListRunsRequest(),
                                                 metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return [to_run_info(r) for r in response.runs]

    async def cancel(self, run_id: str) -> None:
        """Stop a run: SIGTERM to its whole tree, SIGKILL after the tool's kill grace."""
        try:
            await self._exec.CancelRun(exec_pb2.CancelRunRequest(run_id=run_id),
                                       metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def signal(self, run_id: str, sig: int) -> None:
        """Send signal ``sig`` (1 to 64) to a run's process group."""
        try:
            await self._exec.SignalRun(exec_pb2.SignalRunRequest(run_id=run_id, signal=sig),
                                       metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def call(self, tool: str, *, agent: str = "", timeout: float | None = None,
                   on_approval: AsyncOnApproval | None = None, **arguments: str) -> RunResult:
        """Call a function tool (read_file, write_file, list_directory, grep_search)."""
        collector = Collector()
        async for event in self.stream(None, agent=agent, tool=tool, arguments=arguments,
                                       timeout=timeout, on_approval=on_approval):
            collector.add(event)
        return collector.result()

    async def watch_approvals(self) -> AsyncIterator[ApprovalRequested | ApprovalResolved]:
        """Pending approvals this caller may decide (those waiting first), then news."""
        call = self._approvals.WatchApprovals(approvals_pb2.WatchApprovalsRequest(),
                                              metadata=self._metadata)
        try:
            async for response in call:
                yield to_watch_event(response)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def get_approval(self, approval_id: str) -> ApprovalRequested:
        """The pending approval ``approval_id``, with the plan it would run; raises
        NotFoundError when none is pending, PermissionDeniedError when this caller may not
        decide it."""
        try:
            response = await self._approvals.GetApproval(
                approvals_pb2.GetApprovalRequest(approval_id=approval_id),
                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return to_approval(response.approval)

    async def decide_approval(self, request: ApprovalRequested, approve: bool,
                              reason: str = "") -> None:
        """Approve or deny ``request`` (as watched), bound to the plan it showed."""
        try:
            await self._approvals.DecideApproval(approvals_pb2.DecideApprovalRequest(
                decision=decision_message(request, ApprovalDecision(approve, reason)).approval),
                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
