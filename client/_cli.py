"""``execgate``: run tool calls on an execgated daemon from a shell.

    execgate run [--agent A] [--tool T] [--cwd DIR] [--timeout S] [--env K=V] [-i]
                 [--detach] -- ARGV...
    execgate attach RUN_ID [--stdout-offset N] [--stderr-offset N]
    execgate runs
    execgate cancel RUN_ID
    execgate signal RUN_ID SIGNAL
    execgate call TOOL [NAME=VALUE ...]
    execgate agents
    execgate approvals watch | approve ID | deny ID [--reason TEXT]
    execgate mcp [--agent A] [--without-elicitation deny|wait]

A call the policy wants a human to approve asks on the terminal ("Allow ...? [y/N]") when
there is one, and is denied otherwise, unless --wait-for-approver leaves it to someone
running ``execgate approvals``.

Exit status of ``run`` and ``call``: the command's own; 128+N when it was killed by signal N;
124 on timeout; 126 when the policy refused the call; 127 when an allowed command is not on
the daemon's PATH; 125 for execgate's own failures (connection, authentication, usage, the
output limit). ``run --detach`` prints the run's id and leaves it running; ``attach`` copies
a run's output from the offsets and exits as ``run`` would. ``approvals approve|deny ID``,
``cancel`` and ``signal``: 0 once done; 1 when no such approval or run is there (decided,
expired, ended past its retention, unknown or not yours); 126 when you may not decide it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

from execgate.client._client import Client, OnApproval
from execgate.client._exceptions import (
    ApprovalDeniedError,
    AuthenticationError,
    CommandNotFoundError,
    ExecgateError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RPCError,
)
from execgate.client._models import (
    ApprovalDecision,
    ApprovalRequested,
    Event,
    Exited,
    ExitReason,
    OutputChunk,
    RunInfo,
    TLSConfig,
)

EXIT_UNKNOWN_APPROVAL = 1
EXIT_TIMEOUT = 124
EXIT_EXECGATE = 125
EXIT_DENIED = 126
EXIT_NOT_FOUND = 127


def _stdin_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := os.read(stream.fileno(), 64 * 1024):
        yield chunk


def exit_status(exited: Exited) -> int:
    """The shell's view of how a run ended."""
    if exited.reason is ExitReason.TIMEOUT:
        return EXIT_TIMEOUT
    if exited.reason in (ExitReason.OUTPUT_LIMIT, ExitReason.CANCELLED,
                         ExitReason.SANDBOX_ERROR, ExitReason.DAEMON_STOPPING,
                         ExitReason.UNSPECIFIED):
        return EXIT_EXECGATE
    if exited.signal:
        return 128 + exited.signal
    return exited.exit_code


def _copy(events: Iterator[Event]) -> int:
    """Copy output byte-exact to our own stdout/stderr; return the exit status."""
    sinks = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for event in events:
        if isinstance(event, ApprovalRequested):
            continue  # answered by the on_approval callback
        if isinstance(event, OutputChunk):
            sink = sinks[event.stream]
            sink.write(event.data)
            sink.flush()
        elif isinstance(event, Exited):
            if event.reason not in (ExitReason.EXITED, ExitReason.SIGNALED) and event.message:
                print(f"execgate: {event.reason.name.lower()}: {event.message}", file=sys.stderr)
            return exit_status(event)
    print("execgate: the daemon ended the call without an exit status", file=sys.stderr)
    return EXIT_EXECGATE


def error_status(exc: ExecgateError) -> tuple[int, str]:
    """Exit status and message for an error."""
    if isinstance(exc, AuthenticationError):
        return EXIT_EXECGATE, f"unauthenticated: {exc}"
    if isinstance(exc, ApprovalDeniedError):
        return EXIT_DENIED, f"approval denied: {exc}"
    if isinstance(exc, PermissionDeniedError):
        return EXIT_DENIED, f"denied: {exc}"
    if isinstance(exc, InvalidArgumentError) and exc.rule:
        return EXIT_DENIED, f"refused: {exc}"  # the input broke a policy rule (a path, ...)
    if isinstance(exc, CommandNotFoundError):
        return EXIT_NOT_FOUND, f"not found: {exc}"
    if isinstance(exc, RPCError):
        return EXIT_EXECGATE, f"{exc.status.name.lower()}: {exc}"
    return EXIT_EXECGATE, str(exc)


def ask_on_terminal(wait_for_approver: bool) -> OnApproval:
    """The CLI's answer to an approval request: ask the person at the terminal."""

    def answer(request: ApprovalRequested) -> bool | ApprovalDecision | None:
        try:
            if not sys.stdin.isatty():
                raise OSError("stdin is not a terminal")
            # Two handles: a terminal is not seekable, which a text "r+" file requires.
            tty_in = open("/dev/tty")  # noqa: SIM115 - closed below
            tty = open("/dev/tty", "w")  # noqa: SIM115 - closed below
        except OSError:
            if wait_for_approver:
                print(f"execgate: waiting for an approver: {request.prompt} "
                      f"(id {request.approval_id})", file=sys.stderr, flush=True)
                return None
            return ApprovalDecision(False, "no terminal to ask, and no --wait-for-approver")
        with tty_in, tty:
            print(f"  runs: {request.plan.executable} {' '.join(request.plan.argv[1:])}\n"
                  f"  in:   {request.plan.cwd}", file=tty)
            tty.write(f"{request.prompt} [y/N] ")
            tty.flush()
            reply = tty_in.readline().strip().lower()
        if reply in ("y", "yes"):
            return True
        return ApprovalDecision(False, "declined at the terminal")

    return answer


def _approvals(client: Client, args: argparse.Namespace) -> int:
    if args.action == "watch":
        for event in client.watch_approvals():
            if isinstance(event, ApprovalRequested):
                print(f"pending {event.approval_id} from {event.requester}: {event.prompt}\n"
                      f"  runs: {event.plan.executable} {' '.join(event.plan.argv[1:])}\n"
                      f"  in:   {event.plan.cwd}\n  expires: "
                      f"{time.strftime('%H:%M:%S', time.localtime(event.expires_at))}",
                      flush=True)
            else:
                print(f"{event.outcome} {event.approval_id}"
                      + (f" by {event.decider}" if event.decider else ""), flush=True)
        return 0
    # Decide only what was shown: fetch the request, with its plan and digest, first.
    try:
        request = client.get_approval(args.id)
        client.decide_approval(request, args.action == "approve", args.reason)
    except NotFoundError as exc:
        print(f"execgate: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN_APPROVAL
    print(f"{args.action}d {request.approval_id}: {request.prompt}\n"
          f"  runs: {request.plan.executable} {' '.join(request.plan.argv[1:])}\n"
          f"  in:   {request.plan.cwd}")
    return 0


def _signal_number(text: str) -> int:
    """A signal given as a number, ``TERM`` or ``SIGTERM``."""
    if text.isdigit():
        return int(text)
    name = text.upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise SystemExit(f"execgate: {text!r} is not a signal (give a number or a name "
                         "such as TERM, INT, USR1)") from None


def _run_line(run: RunInfo) -> str:
    """One line of ``execgate runs``."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at))
    ended = ("running" if run.exit is None else
             f"{run.exit.reason.name.lower()} {run.exit.exit_code or run.exit.signal}")
    return "\t".join([run.run_id, ended, started, run.subject, f"{run.agent}/{run.tool}",
                      " ".join(run.argv), "detached" if run.detached else "attached"])


def _runs(client: Client, args: argparse.Namespace) -> int:
    """``attach``, ``runs``, ``cancel`` and ``signal``."""
    if args.command == "runs":
        for run in client.runs():
            print(_run_line(run))
        return 0
    if args.command == "attach":
        return _copy(client.attach(args.run_id, stdout_offset=args.stdout_offset,
                                   stderr_offset=args.stderr_offset))
    try:
        if args.command == "cancel":
            client.cancel(args.run_id)
        else:
            client.signal(args.run_id, _signal_number(args.signal))
    except NotFoundError as exc:
        print(f"execgate: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN_APPROVAL
    return 0


def _parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"execgate: {what} {pair!r} is not NAME=VALUE")
        out[name] = value
    return out


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", help="daemon address (default: $EXECGATE_TARGET, "
                        "else 127.0.0.1:7878)")
    common.add_argument("--token", help="API key or JWT (default: $EXECGATE_TOKEN, else the "
                        "local token of a daemon on its embedded default)")
    common.add_argument("--agent", default="", help="agent to act as (optional when only one)")
    common.add_argument("--ca", help="TLS: CA of the daemon's certificate (PEM)")
    common.add_argument("--cert", help="mutual TLS: this client's certificate (PEM)")
    common.add_argument("--key", help="mutual TLS: its private key (PEM)")
    parser = argparse.ArgumentParser(prog="execgate",
                                     description=__doc__.splitlines()[0].replace("``", ""),
                                     epilog="Run 'execgate COMMAND --help' for details.")
    parser.add_argument("--version", action="version",
                        version=f"execgate {importlib.metadata.version('execgate')}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="run a command tool")
    run.add_argument("--tool", default="", help="command tool (optional when only one)")
    run.add_argument("--cwd", default="", help="directory inside the tool's working directory")
    run.add_argument("--timeout", type=float, help="seconds (at most the tool's maximum)")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("-i", "--stdin", action="store_true", help="forward our stdin")
    run.add_argument("--wait-for-approver", action="store_true",
                     help="without a terminal, wait for an approver instead of denying")
    run.add_argument("--detach", action="store_true",
                     help="print the run's id and leave it running (see attach, runs)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command and arguments")
    call = commands.add_parser("call", parents=[common], help="call a function tool")
    call.add_argument("tool")
    call.add_argument("arguments", nargs="*", metavar="NAME=VALUE")
    call.add_argument("--timeout", type=float)
    commands.add_parser("agents", parents=[common], help="list the agents you can see")
    approvals = commands.add_parser("approvals", parents=[common],
                                    help="watch and decide approval requests")
    actions = approvals.add_subparsers(dest="action", required=True)
    actions.add_parser("watch", help="print pending requests as they come")
    for action in ("approve", "deny"):
        decide = actions.add_parser(action, help=f"{action} a pending request")
        decide.add_argument("id")
        decide.add_argument("--reason", default="")
    attach = commands.add_parser("attach", parents=[common],
                                 help="copy a run's output, from offsets, until it ends")
    attach.add_argument("run_id")
    attach.add_argument("--stdout-offset", type=int, default=0, metavar="N")
    attach.add_argument("--stderr-offset", type=int, default=0, metavar="N")
    commands.add_parser("runs", parents=[common], help="list your runs")
    cancel = commands.add_parser("cancel", parents=[common],
                                 help="stop a run (SIGTERM, then SIGKILL)")
    cancel.add_argument("run_id")
    signal_cmd = commands.add_parser("signal", parents=[common], help="signal a run")
    signal_cmd.add_argument("run_id")
    signal_cmd.add_argument("signal", help="number or name (TERM, INT, USR1 ...)")
    mcp = commands.add_parser("mcp", parents=[common],
                              help="serve the agent's tools to an MCP host on stdio")
    mcp.add_argument("--without-elicitation", choices=("deny", "wait"), default="deny",
                     help="an approval the MCP host cannot ask its user about: deny it "
                          "(default), or wait for an approver (execgate approvals)")
    return parser


def _serve_mcp(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    try:  # the mcp extra is optional: imported for this command only
        from execgate.client._mcp import serve
    except ImportError as missing:
        print(f"execgate: {missing}", file=sys.stderr)
        return EXIT_EXECGATE
    asyncio.run(serve(args.target, args.token, tls, args.agent, args.without_elicitation))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``execgate``."""
    args = _parser().parse_args(argv)
    try:
        tls = TLSConfig(ca=args.ca, cert=args.cert, key=args.key) if (
            args.ca or args.cert or args.key) else None
        if args.command == "mcp":
            return _serve_mcp(args, tls)
        with Client(args.target, token=args.token, tls=tls) as client:
            if args.command == "agents":
                for agent in client.agents():
                    tools = ", ".join(f"{t.name} ({t.type})" for t in agent.tools)
                    print(f"{agent.name}\t{agent.visibility}\t{tools}")
                return 0
            if args.command == "approvals":
                return _approvals(client, args)
            if args.command in ("attach", "runs", "cancel", "signal"):
                return _runs(client, args)
            if args.command == "call":
                return _copy(client.stream(None, agent=args.agent, tool=args.tool,
                                           arguments=_parse_pairs(args.arguments, "argument"),
                                           timeout=args.timeout,
                                           on_approval=ask_on_terminal(False)))
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                print("execgate: give the command after --, e.g. execgate run -- ls -l",
                      file=sys.stderr)
                return EXIT_EXECGATE
            if args.detach:
                if args.stdin:
                    print("execgate: --detach takes no stdin (-i)", file=sys.stderr)
                    return EXIT_EXECGATE
                print(client.start(command, agent=args.agent, tool=args.tool, cwd=args.cwd,
                                   env=_parse_pairs(args.env, "--env"), timeout=args.timeout,
                                   on_approval=ask_on_terminal(args.wait_for_approver)).id)
                return 0
            return _copy(client.stream(
                command, agent=args.agent, tool=args.tool, cwd=args.cwd,
                env=_parse_pairs(args.env, "--env"), timeout=args.timeout,
                stdin=_stdin_chunks(sys.stdin.buffer) if args.stdin else None,
                on_approval=ask_on_terminal(args.wait_for_approver)))
    except ExecgateError as exc:
        status, message = error_status(exc)
        print(f"execgate: {message}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
