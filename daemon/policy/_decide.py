"""The policy decision: a tool call made concrete as a Plan, or a Denial naming its rule."""

from __future__ import annotations

import math
import stat
from pathlib import Path

from execgate.daemon.config import AgentConfig, PolicyConfig, ToolConfig
from execgate.daemon.model import (
    CommandPlan,
    Confinement,
    Denial,
    DenialKind,
    FunctionPlan,
    Limits,
    Plan,
    ToolCall,
)
from execgate.daemon.policy._command import check_argv, check_command, resolve_command
from execgate.daemon.policy._confine import resolve as resolve_confinement
from execgate.daemon.policy._env import check_env, command_env
from execgate.daemon.policy._jail import check_relative, resolve_cwd, resolve_path
from execgate.daemon.policy._prompt import approval_prompt
from execgate.daemon.tools import FUNCTION_TOOLS, FunctionTool
from execgate.daemon.tools._registry import FLAG_VALUES, MAX_OFFSET

FUNCTION_ARGUMENTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    h: (t.required, t.optional) for h, t in FUNCTION_TOOLS.items()}
"""Named arguments of each built-in function tool: (required, optional)."""


class Policy:
    """Decides tool calls against one loaded policy. Pure: it runs nothing."""

    def __init__(self, config: PolicyConfig, base: Path) -> None:
        self._config = config
        self._jails = {name: (base / tool.working_directory).resolve()
                       for name, tool in config.tools.items()}
        self._confinement = {name: resolve_confinement(config, name, self._jails[name])
                             for name in config.tools}

    @property
    def confinements(self) -> dict[str, Confinement]:
        """Each tool's resolved sandbox."""
        return dict(self._confinement)

    @property
    def jails(self) -> dict[str, Path]:
        """Each tool's working directory, resolved."""
        return dict(self._jails)

    def approval_prompt(self, plan: Plan) -> str | None:
        """The question for a human when ``plan`` needs approval (the policy's ask), else
        None (allow)."""
        return approval_prompt(self._config.tools[plan.tool], plan)

    def approval_rule(self, plan: Plan) -> str:
        """The key that asks for approval of ``plan`` (when ``approval_prompt`` is not None)."""
        ask_all = self._config.tools[plan.tool].require_approval
        return f"tools.{plan.tool}.require_approval{'' if ask_all else '_for'}"

    def plan(self, agent_name: str, agent: AgentConfig, call: ToolCall) -> Plan:
        """The Plan for ``call`` by an agent the caller may use; raises Denial."""
        tool_name = call.tool or self._only_tool(agent_name, agent, call)
        if tool_name not in agent.tools or tool_name not in self._config.tools:
            raise Denial(DenialKind.TOOL_NOT_FOUND,
                         f"agent {agent_name!r} has no tool {tool_name!r}; its tools: "
                         f"{', '.join(self._tools_of(agent)) or '(none)'}",
                         f"agents.{agent_name}.tools")
        tool = self._config.tools[tool_name]
        limits = self._limits(tool_name, tool, call.timeout)
        if tool.type == "command":
            return self._command(agent_name, tool_name, tool, call, limits)
        return self._function(agent_name, tool_name, tool, call, limits)

    def _tools_of(self, agent: AgentConfig) -> list[str]:
        return [t for t in agent.tools if t in self._config.tools]

    def _only_tool(self, agent_name: str, agent: AgentConfig, call: ToolCall) -> str:
        wanted = "command" if call.argv else "function"
        choices = [t for t in self._tools_of(agent) if self._config.tools[t].type == wanted]
        if len(choices) == 1:
            return choices[0]
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"name the tool: agent {agent_name!r} has "
                     f"{len(choices)} {wanted} tools ({', '.join(choices) or 'none'})")

    @staticmethod
    def _limits(tool_name: str, tool: ToolConfig, requested: float | None) -> Limits:
        maximum = tool.max_execution_time
        if requested is not None and (requested < 0 or not math.isfinite(requested)):
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"timeout must be zero (the tool's maximum, {maximum:g}s) or positive",
                         f"tools.{tool_name}.max_execution_time")
        timeout = maximum if not requested else min(requested, maximum)
        return Limits(timeout=timeout, output_limit_bytes=tool.max_output_bytes,
                      kill_grace=tool.kill_grace, idle_timeout=tool.idle_timeout)

    def _command(self, agent_name: str, tool_name: str, tool: ToolConfig, call: ToolCall,
                 limits: Limits) -> CommandPlan:
        if call.arguments:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"tool {tool_name!r} is a command tool: give argv, not arguments")
        check_argv(call.argv)
        check_command(call.argv[0], tool_name, tool)
        check_env(call.env, f"tools.{tool_name}.env")
        jail = self._jails[tool_name]
        cwd = resolve_cwd(jail, call.cwd, f"tools.{tool_name}.working_directory")
        executable = resolve_command(call.argv[0], self._config.server.path)
        env = command_env(self._config.server.path, jail, tool.env, call.env)
        return CommandPlan(agent=agent_name, tool=tool_name, executable=executable,
                           argv=call.argv, cwd=cwd.path, cwd_identity=cwd.identity, env=env,
                           limits=limits,
                           stdin=call.stdin, jail=jail,
                           confinement=self._confinement[tool_name])

    def _function(self, agent_name: str, tool_name: str, tool: ToolConfig, call: ToolCall,
                  limits: Limits) -> Plan:
        handler = tool.handler or tool_name
        if call.argv:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"tool {tool_name!r} is a function tool ({handler}): give named "
                         "arguments, not argv")
        required, optional = FUNCTION_ARGUMENTS[handler]
        given = set(call.arguments)
        if missing := required - given:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"{handler} needs argument(s): {', '.join(sorted(missing))}")
        if unknown := given - required - optional:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"{handler} takes no argument(s) {', '.join(sorted(unknown))}; it "
                         f"takes: {', '.join(sorted(required | optional))}")
        rule = f"tools.{tool_name}.working_directory"
        args = dict(call.arguments)
        args["path"] = check_relative(args.get("path", "."), rule)
        jail = self._jails[tool_name]
        _check_function_values(FUNCTION_TOOLS[handler], args)
        if handler == "grep_search":
            return self._grep(agent_name, tool_name, jail, args, limits)
        return FunctionPlan(agent=agent_name, tool=tool_name, handler=handler, arguments=args,
                            jail=jail, limits=limits, max_file_bytes=tool.max_file_bytes)

    def _grep(self, agent_name: str, tool_name: str, jail: Path, args: dict[str, str],
              limits: Limits) -> CommandPlan:
        """grep_search runs GNU grep in the jail: its matcher cannot backtrack forever, and the
        run gets the same deadline, output cap and confinement as any command."""
        if "\0" in args["pattern"]:
            raise Denial(DenialKind.INVALID_ARGUMENT, "pattern contains a NUL byte")
        # grep follows a symlink named on its command line: it is given the real path the
        # resolution beneath the jail found instead. A FIFO or device would block grep until
        # the deadline: only files and directories are searched.
        rule = f"tools.{tool_name}.working_directory"
        target = resolve_path(jail, args["path"], rule)
        if not (stat.S_ISREG(target.mode) or stat.S_ISDIR(target.mode)):
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"path {args['path']!r} is not a regular file or directory", rule)
        cwd = resolve_cwd(jail, "", rule)
        argv = ["grep", "-rnI", "--no-messages", "--color=never"]
        argv.append("-F" if args.get("fixed_strings") == "true" else "-E")
        if args.get("ignore_case") == "true":
            argv.append("-i")
        argv += ["-e", args["pattern"], "--", str(target.path.relative_to(cwd.path))]
        path = self._config.server.path
        return CommandPlan(agent=agent_name, tool=tool_name,
                           executable=resolve_command("grep", path), argv=tuple(argv),
                           cwd=cwd.path, cwd_identity=cwd.identity,
                           env=command_env(path, jail, {}, {}), limits=limits,
                           stdin=False, jail=jail,
                           confinement=self._confinement[tool_name])


def _check_function_values(tool: FunctionTool, args: dict[str, str]) -> None:
    """Each given value holds what its argument's kind says (paths are checked apart)."""
    for argument in tool.arguments:
        value = args.get(argument.name)
        if value is None:
            continue
        if argument.kind == "bytes":
            # Length first: int() of thousands of digits is refused by Python itself.
            if not (value.isascii() and value.isdigit() and len(value) <= len(str(MAX_OFFSET))
                    and int(value) <= MAX_OFFSET):
                raise Denial(DenialKind.INVALID_ARGUMENT, f"{argument.name} must be a whole "
                             f"number of bytes from 0 to {MAX_OFFSET}")
        elif argument.kind == "flag" and value not in FLAG_VALUES:
            raise Denial(DenialKind.INVALID_ARGUMENT, f"{argument.name} must be true or false")
        elif argument.kind == "choice" and value not in argument.choices:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"{argument.name} must be one of {', '.join(argument.choices)}: "
                         f"{argument.description}")
