"""``Client`` and ``AsyncClient``: run tool calls on an execgated daemon.

    with Client("127.0.0.1:7878", token="...") as c:
        r = c.run(["echo", "hi"], agent="default")
        assert r.stdout == b"hi\\n"
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from execgate.client._exceptions import ProtocolError, from_rpc_error
from execgate.client._local import read_local_token
from execgate.client._models import (
    AgentInfo,
    Event,
    Exited,
    ExitReason,
    OutputChunk,
    Plan,
    RunResult,
    Sandbox,
    Started,
    TLSConfig,
    ToolInfo,
)
from execgate.v1 import agents_pb2, agents_pb2_grpc, exec_pb2, exec_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:7878"
STDIN_CHUNK = 64 * 1024
_STREAMS = {exec_pb2.STREAM_STDOUT: "stdout", exec_pb2.STREAM_STDERR: "stderr"}
_VISIBILITY = {agents_pb2.VISIBILITY_PUBLIC: "public", agents_pb2.VISIBILITY_INTERNAL: "internal",
               agents_pb2.VISIBILITY_PRIVATE: "private"}
_TOOL_TYPES = {agents_pb2.TOOL_TYPE_COMMAND: "command", agents_pb2.TOOL_TYPE_FUNCTION: "function"}
# Match the daemon's limit, so that a large write_file content gets the daemon's answer.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 4 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 4 * 1024 * 1024)]


def resolve_target(target: str | None) -> str:
    """``target``, else ``$EXECGATE_TARGET``, else the embedded default's address."""
    return target or os.environ.get("EXECGATE_TARGET") or DEFAULT_TARGET


def resolve_token(target: str, token: str | None) -> str | None:
    """``token``, else ``$EXECGATE_TOKEN`` (empty means none), else the local token for
    ``target`` left by ``execgated serve``."""
    if token is not None:
        return token or None
    if "EXECGATE_TOKEN" in os.environ:
        return os.environ["EXECGATE_TOKEN"] or None
    return read_local_token(target)


def start_request(argv: Sequence[str] | None, agent: str, tool: str,
                  arguments: Mapping[str, str] | None, cwd: str,
                  env: Mapping[str, str] | None, timeout: float | None,
                  stdin: bool) -> exec_pb2.ExecuteRequest:
    """The first message of an Execute stream."""
    start = exec_pb2.StartCall(agent=agent, tool=tool, argv=list(argv or ()),
                               arguments=dict(arguments or {}), cwd=cwd, env=dict(env or {}),
                               stdin=stdin)
    if timeout is not None:
        start.timeout.FromNanoseconds(round(timeout * 1e9))
    return exec_pb2.ExecuteRequest(start=start)


def _seconds(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def to_event(response: exec_pb2.ExecuteResponse) -> Event:
    """One daemon message as a client event."""
    kind = response.WhichOneof("response")
    if kind == "output":
        o = response.output
        return OutputChunk(_STREAMS.get(o.stream, "stdout"), o.offset, o.data)
    if kind == "accepted":
        p = response.accepted.plan
        s, lim = p.sandbox, p.limits
        return Started(response.accepted.run_id, Plan(
            agent=p.agent, tool=p.tool, executable=p.executable, argv=tuple(p.argv), cwd=p.cwd,
            env_names=tuple(p.env_names), timeout=_seconds(lim.timeout),
            output_limit_bytes=lim.output_limit_bytes,
            sandbox=Sandbox(filesystem=s.filesystem, namespaces=s.namespaces, cgroup=s.cgroup,
                            network=s.network, run_as=s.run_as)
            if p.HasField("sandbox") else None,
            cpu_time=_seconds(lim.cpu_time) if lim.HasField("cpu_time") else None,
            memory_bytes=lim.memory_bytes, processes=lim.processes, open_files=lim.open_files,
            file_size_bytes=lim.file_size_bytes))
    if kind == "exit":
        e = response.exit
        return Exited(
            reason=ExitReason(e.reason) if e.reason in ExitReason._value2member_map_
            else ExitReason.UNSPECIFIED, exit_code=e.exit_code, signal=e.signal,
            message=e.message, wall_time=_seconds(e.wall_time), user_time=_seconds(e.user_time),
            system_time=_seconds(e.system_time), max_rss_bytes=e.max_rss_bytes,
            stdout_bytes=e.stdout_bytes, stderr_bytes=e.stderr_bytes,
            dropped_bytes=e.dropped_bytes)
    raise ProtocolError(f"unexpected message from the daemon: {kind}")


class _Collector:
    """Folds a stream of events into a RunResult."""

    def __init__(self) -> None:
        self.started: Started | None = None
        self.out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.exited: Exited | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Started):
            self.started = event
        elif isinstance(event, OutputChunk):
            self.out[event.stream].append(event.data)
        else:
            self.exited = event

    def result(self) -> RunResult:
        if self.started is None or self.exited is None:
            raise ProtocolError("the daemon ended the call without an accepted and an exit")
        return RunResult(run_id=self.started.run_id, plan=self.started.plan,
                         stdout=b"".join(self.out["stdout"]),
                         stderr=b"".join(self.out["stderr"]), exit=self.exited)


def to_agents(response: agents_pb2.ListAgentsResponse) -> list[AgentInfo]:
    """Discovery's answer as AgentInfo."""
    return [AgentInfo(name=a.name, visibility=_VISIBILITY.get(a.visibility, "unspecified"),
                      tools=tuple(ToolInfo(name=t.name, type=_TOOL_TYPES.get(t.type, "unknown"),
                                           handler=t.handler, require_approval=t.require_approval,
                                           allowed_commands=tuple(t.allowed_commands),
                                           deny_by_default=t.deny_by_default) for t in a.tools))
            for a in response.agents]


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), STDIN_CHUNK):
        yield data[i:i + STDIN_CHUNK]


class Client:
    """A blocking client; one channel, safe to share between threads."""

    def __init__(self, target: str | None = None, *, token: str | None = None,
                 tls: TLSConfig | None = None) -> None:
        self.target = resolve_target(target)
        token = resolve_token(self.target, token)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = (
            grpc.secure_channel(self.target, tls.credentials(), options=_CHANNEL_OPTIONS)
            if tls else grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS))
        self._exec = exec_pb2_grpc.ExecServiceStub(self._channel)
        self._agents = agents_pb2_grpc.AgentServiceStub(self._channel)

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
               stdin: bytes | Iterable[bytes] | None = None) -> Iterator[Event]:
        """Run a call and yield its events as they come: Started, OutputChunks, Exited."""
        first = start_request(argv, agent, tool, arguments, cwd, env, timeout, stdin is not None)

        def requests() -> Iterator[exec_pb2.ExecuteRequest]:
            yield first
            if stdin is not None:
                for chunk in _chunks(stdin) if isinstance(stdin, bytes) else stdin:
                    yield exec_pb2.ExecuteRequest(stdin=chunk)
                yield exec_pb2.ExecuteRequest(close_stdin=exec_pb2.CloseStdin())

        call = self._exec.Execute(requests(), metadata=self._metadata)
        try:
            for response in call:
                yield to_event(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # no-op once finished; kills the run if the caller stopped reading

    def run(self, argv: Sequence[str], *, agent: str = "", tool: str = "", cwd: str = "",
            env: Mapping[str, str] | None = None, timeout: float | None = None,
            stdin: bytes | Iterable[bytes] | None = None) -> RunResult:
        """Run a command tool and wait for it."""
        collector = _Collector()
        for event in self.stream(argv, agent=agent, tool=tool, cwd=cwd, env=env,
                                 timeout=timeout, stdin=stdin):
            collector.add(event)
        return collector.result()

    def call(self, tool: str, *, agent: str = "", timeout: float | None = None,
             **arguments: str) -> RunResult:
        """Call a function tool (read_file, write_file, list_directory, grep_search)."""
        collector = _Collector()
        for event in self.stream(None, agent=agent, tool=tool, arguments=arguments,
                                 timeout=timeout):
            collector.add(event)
        return collector.result()


class AsyncClient:
    """An asyncio client; use within one event loop."""

    def __init__(self, target: str | None = None, *, token: str | None = None,
                 tls: TLSConfig | None = None) -> None:
        self.target = resolve_target(target)
        token = resolve_token(self.target, token)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = (
            grpc.aio.secure_channel(self.target, tls.credentials(), options=_CHANNEL_OPTIONS)
            if tls else grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS))
        self._exec = exec_pb2_grpc.ExecServiceStub(self._channel)
        self._agents = agents_pb2_grpc.AgentServiceStub(self._channel)

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
                     stdin: bytes | AsyncIterable[bytes] | None = None) -> AsyncIterator[Event]:
        """Run a call and yield its events as they come: Started, OutputChunks, Exited."""
        call = self._exec.Execute(metadata=self._metadata)
        try:
            await call.write(start_request(argv, agent, tool, arguments, cwd, env, timeout,
                                           stdin is not None))
            if isinstance(stdin, bytes):
                for chunk in _chunks(stdin):
                    await call.write(exec_pb2.ExecuteRequest(stdin=chunk))
            elif stdin is not None:
                async for chunk in stdin:
                    await call.write(exec_pb2.ExecuteRequest(stdin=chunk))
            if stdin is not None:
                await call.write(exec_pb2.ExecuteRequest(close_stdin=exec_pb2.CloseStdin()))
            await call.done_writing()
            async for response in call:
                yield to_event(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def run(self, argv: Sequence[str], *, agent: str = "", tool: str = "",
                  cwd: str = "", env: Mapping[str, str] | None = None,
                  timeout: float | None = None,
                  stdin: bytes | AsyncIterable[bytes] | None = None) -> RunResult:
        """Run a command tool and wait for it."""
        collector = _Collector()
        async for event in self.stream(argv, agent=agent, tool=tool, cwd=cwd, env=env,
                                       timeout=timeout, stdin=stdin):
            collector.add(event)
        return collector.result()

    async def call(self, tool: str, *, agent: str = "", timeout: float | None = None,
                   **arguments: str) -> RunResult:
        """Call a function tool (read_file, write_file, list_directory, grep_search)."""
        collector = _Collector()
        async for event in self.stream(None, agent=agent, tool=tool, arguments=arguments,
                                       timeout=timeout):
            collector.add(event)
        return collector.result()
