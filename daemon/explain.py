"""``execgated explain``: what the daemon would do with one tool call, without running it.

The call goes through the daemon's own steps, in ExecService's order: identity (the
Authenticator, for ``--token`` or no credential), access (``Access.agent_for``), the policy
(``Policy.plan``), the sandbox (``layers_for`` against this host, as the helper probes it) and
approval (``Policy.approval_prompt``). Nothing is copied, so explain cannot drift from serve.
Rate limits and free run slots depend on traffic, not on the policy: they are not evaluated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
from dataclasses import dataclass
from typing import Any

from execgate.daemon.access import Access
from execgate.daemon.auth import Authenticator, JwksCache, JwtVerifier
from execgate.daemon.config import AuthConfig, PolicyConfig
from execgate.daemon.model import (
    ANONYMOUS,
    CommandPlan,
    Denial,
    FunctionPlan,
    Plan,
    Principal,
    ToolCall,
)
from execgate.daemon.policy import Policy
from execgate.daemon.sandbox import HostSupport, Layers, layers_for

EXIT_ALLOW, EXIT_DENY, EXIT_ASK = 0, 1, 3
"""explain's exit statuses (2 is a policy that does not load, as for every command)."""
EXECUTE = "/execgate.v1.ExecService/Execute"
NOT_EVALUATED = "rate limiting and run slots (they depend on traffic, not on the policy)"


@dataclass(frozen=True)
class Explanation:
    """The daemon's verdict on one call, and what would run."""

    decision: str
    """``allow``, ``deny`` or ``ask`` (a person must approve)."""
    rule: str
    """The policy key that decided."""
    reason: str
    principal: Principal
    kind: str = ""
    """A denial's kind (``policy_denied`` ...), as the daemon's ``execgate-error``."""
    plan: Plan | None = None
    layers: Layers | None = None
    """The sandbox layers the call gets here; None when the host was not checked."""
    prompt: str | None = None

    @property
    def exit_status(self) -> int:
        """0 allow, 1 deny, 3 ask."""
        return {"allow": EXIT_ALLOW, "deny": EXIT_DENY}.get(self.decision, EXIT_ASK)

    def to_json(self, host_checked: bool) -> dict[str, Any]:
        """The explanation as data, for ``--json``."""
        out: dict[str, Any] = {
            "decision": self.decision, "rule": self.rule, "reason": self.reason,
            "kind": self.kind or None,
            "principal": {"subject": self.principal.subject, "method": self.principal.method,
                          "local": self.principal.local},
            "approval_prompt": self.prompt, "not_evaluated": NOT_EVALUATED}
        if self.plan is not None:
            out.update(agent=self.plan.agent, tool=self.plan.tool, **_plan(self.plan))
            out["sandbox"] = _sandbox(self.plan, self.layers, host_checked)
        return out


def _plan(plan: Plan) -> dict[str, Any]:
    limits = {"timeout": plan.limits.timeout, "output_limit_bytes": plan.limits.output_limit_bytes,
              "kill_grace": plan.limits.kill_grace}
    if isinstance(plan, FunctionPlan):
        return {"executable": plan.executable, "arguments": plan.arguments,
                "cwd": str(plan.jail), "env": [], "limits": limits}
    return {"executable": plan.executable, "argv": list(plan.argv), "cwd": str(plan.cwd),
            "env": sorted(plan.env), "limits": limits}


def _sandbox(plan: Plan, layers: Layers | None, host_checked: bool) -> dict[str, Any] | None:
    if not isinstance(plan, CommandPlan):
        return None  # a function tool runs in the daemon, beneath its jail
    c = plan.confinement
    return {
        "layers": None if layers is None else {
            "filesystem": layers.landlock, "namespaces": layers.namespaces,
            "view": layers.view, "cgroup": layers.cgroup},
        "host_checked": host_checked,
        "configured": {"filesystem": c.filesystem, "namespaces": c.namespaces,
                       "view": c.view, "cgroup": c.cgroup},
        "user": c.user, "network": c.network, "read_paths": list(c.read_paths),
        "write_paths": list(c.write_paths), "unix_sockets": list(c.unix_sockets),
        "limits": {"cpu_time": c.cpu_time, "file_size": c.file_size,
                   "open_files": c.open_files, "address_space": c.address_space,
                   "processes": c.processes, "memory": c.memory, "tmp_size": c.tmp_size}}


def explain(config: PolicyConfig, policy: Policy, principal: Principal, call: ToolCall,
            host: HostSupport | None) -> Explanation:
    """The daemon's verdict on ``call`` by ``principal``; ``host`` None skips the sandbox
    layers (a required layer this host lacks would then go unnoticed)."""
    try:
        agent_name, agent = Access(config).agent_for(principal, call.agent)
        plan = policy.plan(agent_name, agent, call)
        layers = (layers_for(plan.tool, plan.confinement, host)
                  if isinstance(plan, CommandPlan) and host is not None else None)
        prompt = policy.approval_prompt(plan)
    except Denial as denial:
        return Explanation("deny", denial.rule, denial.message, principal, denial.kind.value)
    tool = config.tools[plan.tool]
    if prompt is not None:
        return Explanation("ask", policy.approval_rule(plan), "a person must approve the call",
                           principal, plan=plan, layers=layers, prompt=prompt)
    # What admitted it: a command tool's allowlist (or its open default); a function
    # tool is admitted by the agent's list alone.
    if isinstance(plan, CommandPlan) and tool.type == "command":
        key = "allowed_commands" if plan.argv[0] in tool.allowed_commands else "deny_by_default"
        rule = f"tools.{plan.tool}.{key}"
    else:
        rule = f"agents.{agent_name}.tools"
    return Explanation("allow", rule, "the call would run", principal, plan=plan,
                       layers=layers)


async def identify(auth: AuthConfig, token: str | None) -> Principal:
    """The principal the daemon makes of a call with ``token`` (or none); raises Denial."""
    verifier = None
    if auth.jwt and token and token.count(".") == 2:
        assert auth.jwks_url is not None
        jwks = JwksCache(auth.jwks_url, auth.refresh_interval, auth.jwks_cooldown)
        await jwks.refresh()
        verifier = JwtVerifier(auth, jwks)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return await Authenticator(auth, verifier).authenticate(EXECUTE, metadata)


def assumed(subject: str, claims: dict[str, str]) -> Principal:
    """The principal ``--as`` names: ``anonymous``, ``uid:N`` (a unix socket caller, who
    reaches private agents), or a subject (with JWT ``claims``, if any)."""
    if subject == "anonymous":
        return ANONYMOUS
    if subject.startswith("uid:"):
        return Principal(subject=subject, method="unix", local=True)
    return Principal(subject=subject, method="jwt" if claims else "api_key", claims=claims)


def render(explanation: Explanation, host_checked: bool) -> str:
    """The explanation for a person."""
    e = explanation
    lines = [f"decision:  {e.decision}", f"rule:      {e.rule or '(none)'}",
             f"reason:    {e.reason}",
             f"principal: {e.principal.subject} ({e.principal.method})"]
    data = e.to_json(host_checked)
    if e.plan is not None:
        what = (shlex.join(data["argv"]) if "argv" in data
                else " ".join(f"{k}={v}" for k, v in sorted(data["arguments"].items())))
        lines += [f"agent:     {e.plan.agent}, tool {e.plan.tool}",
                  f"runs:      {data['executable']}  ({what})", f"in:        {data['cwd']}",
                  f"env:       {', '.join(data['env']) or '(none)'}",
                  "limits:    " + ", ".join(f"{k} {v}" for k, v in data["limits"].items())]
        sandbox = data["sandbox"]
        if sandbox is not None:
            layers = sandbox["layers"]
            lines.append("sandbox:   " + (
                ", ".join(f"{k} {'on' if v else 'off'}" for k, v in layers.items())
                if layers is not None else "layers not checked (--no-host)"))
            lines.append(f"           user {sandbox['user']}, network "
                         f"{'on' if sandbox['network'] else 'off'}, " + ", ".join(
                             f"{k} {v}" for k, v in sandbox["limits"].items()))
    if e.prompt is not None:
        lines.append(f"prompt:    {e.prompt}")
    lines.append(f"not evaluated: {NOT_EVALUATED}")
    return "\n".join(lines)


def add_command(commands: Any) -> None:
    """The ``explain`` subcommand's arguments (``commands``: argparse's subparsers)."""
    cmd = commands.add_parser(
        "explain", help="say whether a tool call would be allowed, by which rule, with what "
        "sandbox, without running it")
    cmd.add_argument("--config", required=True, help="the policy file")
    cmd.add_argument("--agent", default="", help="the agent (default: the only one visible)")
    cmd.add_argument("--tool", default="", help="the tool (default: the agent's only one)")
    who = cmd.add_mutually_exclusive_group()
    who.add_argument("--as", dest="principal", metavar="PRINCIPAL",
                     help="assume this caller: a subject, uid:N (unix socket) or anonymous")
    who.add_argument("--token", help="a credential, checked as the daemon checks it")
    cmd.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE",
                     help="with --as: a JWT claim of the caller (repeatable)")
    cmd.add_argument("--cwd", default="", help="working directory, relative to the jail")
    cmd.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="an environment variable the call sets (repeatable)")
    cmd.add_argument("--no-host", action="store_true",
                     help="do not probe this host's sandbox (layers are then not checked)")
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.add_argument("call", nargs="*", metavar="ARG",
                     help="argv (after --), or NAME=VALUE arguments for a function tool")


def pairs(items: list[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` items as a mapping; raises ValueError naming a malformed one."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{what} must be NAME=VALUE, not {item!r}")
        out[name] = value
    return out


def call_of(args: argparse.Namespace, config: PolicyConfig) -> ToolCall:
    """The ToolCall ``args`` describe: NAME=VALUE arguments when ``--tool`` names a function
    tool, else argv (which the policy refuses for a function tool, as the daemon does)."""
    tool = config.tools.get(args.tool)
    function = (tool is not None and tool.type == "function"
                and all("=" in item for item in args.call))
    return ToolCall(agent=args.agent, tool=args.tool,
                    argv=() if function else tuple(args.call),
                    arguments=pairs(args.call, "a function tool's argument") if function else {},
                    cwd=args.cwd, env=pairs(args.env, "--env"))


def explain_args(args: argparse.Namespace, config: PolicyConfig, policy: Policy,
                 host: HostSupport | None) -> Explanation:
    """The verdict on the call ``args`` describe, by the caller they name: assumed with
    ``--as``, else authenticated as the daemon would (a refused credential is the verdict)."""
    call = call_of(args, config)
    if args.principal is not None:
        principal = assumed(args.principal, pairs(args.claim, "--claim"))
    else:
        try:
            principal = asyncio.run(identify(config.server.auth, args.token))
        except Denial as denial:
            return Explanation("deny", denial.rule, denial.message, ANONYMOUS,
                               denial.kind.value)
    return explain(config, policy, principal, call, host)


def output(explanation: Explanation, host_checked: bool, as_json: bool) -> str:
    """What explain prints."""
    if as_json:
        return json.dumps(explanation.to_json(host_checked), indent=2)
    return render(explanation, host_checked)
