"""The policy decision: a call made concrete as a Plan, or a Denial that names its rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from execgate.daemon.access import Access
from execgate.daemon.config import parse_policy
from execgate.daemon.model import (
    ANONYMOUS,
    CommandPlan,
    Denial,
    DenialKind,
    FunctionPlan,
    Principal,
    ToolCall,
)
from execgate.daemon.policy import Policy

POLICY = """\
tools:
  sh:
    type: command
    working_directory: ./jail
    max_execution_time: 10s
    allowed_commands: [ls, echo, rm]
    denied_commands: [rm]
    env: {FIXED: "1"}
  open:
    type: command
    working_directory: ./jail
    deny_by_default: false
    denied_commands: [rm]
  read_file:
    type: function
    working_directory: ./jail
agents:
  a:
    tools: [sh, read_file]
  b:
    tools: [sh, open]
  in:
    visibility: internal
  hidden:
    visibility: private
"""


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    (tmp_path / "jail" / "sub").mkdir(parents=True)
    return Policy(parse_policy(POLICY, "t", {}).config, tmp_path)


def plan(policy: Policy, agent: str = "a", **kwargs: object) -> CommandPlan | FunctionPlan:
    config = parse_policy(POLICY, "t", {}).config
    call = ToolCall(**{"agent": agent, "tool": "", **kwargs})  # type: ignore[arg-type]
    return policy.plan(agent, config.agents[agent], call)


def denial(policy: Policy, agent: str = "a", **kwargs: object) -> Denial:
    with pytest.raises(Denial) as info:
        plan(policy, agent, **kwargs)
    return info.value


def test_an_allowed_command_resolves_to_an_absolute_path(policy: Policy, tmp_path: Path) -> None:
    p = plan(policy, argv=("ls", "-l"))
    assert isinstance(p, CommandPlan)
    assert p.executable in ("/usr/bin/ls", "/bin/ls")
    assert p.argv == ("ls", "-l")
    assert p.cwd == (tmp_path / "jail").resolve()


def test_denied_commands_win_over_allowed_commands(policy: Policy) -> None:
    d = denial(policy, argv=("rm", "x"))
    assert (d.kind, d.rule) == (DenialKind.POLICY_DENIED, "tools.sh.denied_commands")


def test_deny_by_default_refuses_what_is_not_allowed(policy: Policy) -> None:
    assert denial(policy, argv=("cat", "x")).rule == "tools.sh.deny_by_default"


def test_deny_by_default_false_allows_what_is_not_denied(policy: Policy) -> None:
    assert isinstance(plan(policy, "b", tool="open", argv=("cat", "x")), CommandPlan)
    assert denial(policy, "b", tool="open", argv=("rm",)).rule == "tools.open.denied_commands"


def test_the_only_command_tool_is_chosen_when_none_is_named(policy: Policy) -> None:
    assert plan(policy, argv=("echo",)).tool == "sh"


def test_several_command_tools_need_a_name(policy: Policy) -> None:
    d = denial(policy, "b", argv=("echo",))
    assert (d.kind, d.message) == (DenialKind.INVALID_ARGUMENT,
                                   "name the tool: agent 'b' has 2 command tools (sh, open)")


def test_a_tool_the_agent_does_not_have_is_not_found(policy: Policy) -> None:
    assert denial(policy, tool="open", argv=("echo",)).kind is DenialKind.TOOL_NOT_FOUND


def test_the_environment_is_built_not_inherited(policy: Policy, tmp_path: Path) -> None:
    p = plan(policy, argv=("echo",), env={"MINE": "2"})
    assert isinstance(p, CommandPlan)
    home = str((tmp_path / "jail").resolve())
    assert p.env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8",
                     "PWD": home, "FIXED": "1", "MINE": "2"}


def test_a_cwd_symlinked_out_of_the_jail_is_denied(policy: Policy, tmp_path: Path) -> None:
    (tmp_path / "jail" / "out").symlink_to(tmp_path)
    assert denial(policy, argv=("ls",), cwd="out").rule == "tools.sh.working_directory"


def test_an_absolute_cwd_inside_the_jail_is_allowed(policy: Policy, tmp_path: Path) -> None:
    sub = (tmp_path / "jail" / "sub").resolve()
    p = plan(policy, argv=("ls",), cwd=str(sub))
    assert isinstance(p, CommandPlan) and p.cwd == sub


def test_a_cwd_that_is_a_file_is_invalid(policy: Policy, tmp_path: Path) -> None:
    (tmp_path / "jail" / "f").write_text("")
    assert denial(policy, argv=("ls",), cwd="f").kind is DenialKind.INVALID_ARGUMENT


def test_an_outside_cwd_is_denied_whether_or_not_it_exists(policy: Policy) -> None:
    assert denial(policy, argv=("ls",), cwd="../nope").message == denial(
        policy, argv=("ls",), cwd="../nope").message
    assert denial(policy, argv=("ls",), cwd="/nonexistent").kind is DenialKind.POLICY_DENIED


def test_timeouts_are_clamped_to_the_tools_maximum(policy: Policy) -> None:
    assert plan(policy, argv=("ls",), timeout=3.0).limits.timeout == 3.0
    assert plan(policy, argv=("ls",), timeout=99.0).limits.timeout == 10.0
    assert plan(policy, argv=("ls",), timeout=0.0).limits.timeout == 10.0
    assert denial(policy, argv=("ls",), timeout=float("nan")).kind is DenialKind.INVALID_ARGUMENT


def test_a_function_tool_takes_arguments_not_argv(policy: Policy) -> None:
    assert denial(policy, tool="read_file", argv=("x",)).kind is DenialKind.INVALID_ARGUMENT
    p = plan(policy, tool="read_file", arguments={"path": "./sub/x"})
    assert isinstance(p, FunctionPlan)


def test_dotdot_in_a_function_path_is_denied(policy: Policy) -> None:
    d = denial(policy, tool="read_file", arguments={"path": "sub/../../x"})
    assert d.rule == "tools.read_file.working_directory"


def test_visibility_follows_the_guide() -> None:
    access = Access(parse_policy(POLICY, "t", {}).config)
    user = Principal(subject="u", method="api_key")
    assert [n for n, _ in access.visible(ANONYMOUS)] == ["a", "b"]
    assert [n for n, _ in access.visible(user)] == ["a", "b", "in"]
    for principal in (ANONYMOUS, user):
        with pytest.raises(Denial) as info:
            access.agent_for(principal, "hidden")
        assert info.value.message == "no agent named 'hidden'"


def test_a_cwd_through_a_symlink_loop_is_invalid_by_rule(policy: Policy, tmp_path: Path) -> None:
    """Path.resolve() raised RuntimeError here, which reached callers as UNKNOWN."""
    (tmp_path / "jail" / "loop").symlink_to("loop")
    d = denial(policy, argv=("ls",), cwd="loop")
    assert (d.kind, d.rule) == (DenialKind.INVALID_ARGUMENT, "tools.sh.working_directory")


def test_a_symlink_loop_then_dotdot_is_not_collapsed_by_string(policy: Policy,
                                                               tmp_path: Path) -> None:
    jail = tmp_path / "jail"
    (jail / "loop1").symlink_to("loop2")
    (jail / "loop2").symlink_to("loop1")
    (jail / "out").symlink_to(tmp_path)
    assert denial(policy, argv=("ls",), cwd="loop1/../out").rule == "tools.sh.working_directory"


def test_a_cwd_link_inside_the_jail_gives_the_real_directory_and_its_identity(
        policy: Policy, tmp_path: Path) -> None:
    sub = (tmp_path / "jail" / "sub").resolve()
    (tmp_path / "jail" / "here").symlink_to("sub")
    p = plan(policy, argv=("ls",), cwd="here")
    assert isinstance(p, CommandPlan)
    assert (p.cwd, p.cwd_identity) == (sub, (sub.stat().st_dev, sub.stat().st_ino))


def test_a_cwd_name_over_255_bytes_is_invalid(policy: Policy) -> None:
    d = denial(policy, argv=("ls",), cwd="x" * 300)
    assert (d.kind, d.rule) == (DenialKind.INVALID_ARGUMENT, "tools.sh.working_directory")
    assert "255 bytes" in d.message


def test_a_cwd_error_names_the_path_as_given_not_the_host(policy: Policy,
                                                          tmp_path: Path) -> None:
    (tmp_path / "jail" / "away").symlink_to(tmp_path)
    assert str(tmp_path) not in denial(policy, argv=("ls",), cwd="away").message


@pytest.mark.parametrize("value", ["9223372036854775808", "18446744073709551616", "9" * 5000,
                                   "-1", "1e3", "٣"])
@pytest.mark.parametrize("name", ["offset", "limit"])
def test_a_read_window_beyond_a_64_bit_offset_is_invalid(policy: Policy, name: str,
                                                         value: str) -> None:
    d = denial(policy, tool="read_file", arguments={"path": "f", name: value})
    assert d.kind is DenialKind.INVALID_ARGUMENT and name in d.message


def test_the_largest_offset_the_kernel_takes_is_allowed(policy: Policy) -> None:
    p = plan(policy, tool="read_file", arguments={"path": "f", "offset": str(2**63 - 1)})
    assert isinstance(p, FunctionPlan)


def test_a_cwd_whose_real_name_is_not_utf8_is_invalid(policy: Policy, tmp_path: Path) -> None:
    """The plan travels as UTF-8 text; a name it cannot carry is refused, not crashed on."""
    odd = os.fsdecode(b"dir-\xff")
    (tmp_path / "jail" / odd).mkdir()
    (tmp_path / "jail" / "odd").symlink_to(odd)
    d = denial(policy, argv=("ls",), cwd="odd")
    assert (d.kind, d.rule) == (DenialKind.INVALID_ARGUMENT, "tools.sh.working_directory")
