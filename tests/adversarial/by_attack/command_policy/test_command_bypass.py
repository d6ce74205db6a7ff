"""Command-policy bypass: running what the policy refuses, by name tricks or through an
allowed command. Each ends in a refusal with its rule, or in a confined run that changed
nothing outside its jail (a canary file beside the jail, a marker in the host's /tmp)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from execgate.client import ExecgateError, PolicyDeniedError
from tests.adversarial.by_attack._outside import Canary, host_marker
from tests.conftest import Daemon, start_daemon

POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_execution_time: 20s
    deny_by_default: true
    allowed_commands: [echo, env, find, xargs, tar, python3, sh, nohup, timeout, awk, git]
    denied_commands: [rm, curl]
agents:
  dev:
    tools: [shell]
server:
  auth:
    enabled: true
    api_keys:
      - {name: tester, key: "${TEST_API_KEY}"}
logger: {level: info, format: json}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("command-policy"), POLICY)
    yield d
    d.stop()


@pytest.fixture
def canary() -> Iterator[Canary]:
    """A world-writable file outside the jail, in a world-writable directory."""
    planted = Canary.plant()
    yield planted
    planted.remove()


def _refused(daemon: Daemon, argv: list[str]) -> PolicyDeniedError:
    with daemon.client() as c, pytest.raises(PolicyDeniedError) as refused:
        c.run(argv, agent="dev", tool="shell")
    return refused.value


def _confined(daemon: Daemon, argv: list[str]) -> None:
    """Run ``argv``; whatever it does, it ends (or is refused) within the tool's rules."""
    with daemon.client() as c, contextlib.suppress(ExecgateError):
        c.run(argv, agent="dev", tool="shell", timeout=15)


def test_a_denied_command_is_refused_by_its_rule(daemon: Daemon) -> None:
    """The baseline every bypass below tries to get around."""
    assert _refused(daemon, ["rm", "-rf", "/"]).rule == "tools.shell.denied_commands"


def test_a_denied_command_in_upper_case_is_refused(daemon: Daemon) -> None:
    """Case folding on case-insensitive file systems (Cursor/Claude Code allowlist bypass
    reports): RM is no allowlisted name."""
    assert _refused(daemon, ["RM", "-rf", "."]).rule == "tools.shell.deny_by_default"


def test_a_command_chained_in_argv0_is_refused(daemon: Daemon) -> None:
    """`echo;rm -rf .` as one word: the shell-metacharacter chaining of agent-tool bypass
    reports (e.g. Claude Code's `echo && rm` allowlist advisory)."""
    assert _refused(daemon, ["echo;rm", "-rf", "."]).rule == "tools.shell.deny_by_default"


def test_a_newline_in_argv0_is_refused(daemon: Daemon) -> None:
    """A newline ends a command in a shell: `echo\\nrm`."""
    assert _refused(daemon, ["echo\nrm", "x"]).rule == "tools.shell.deny_by_default"


def test_a_denied_command_by_path_is_refused(daemon: Daemon) -> None:
    """/usr/bin/rm: a path names a file, not an allowlisted command."""
    assert _refused(daemon, ["/usr/bin/rm", "x"]).rule == "tools.shell.allowed_commands"


def test_a_denied_command_through_a_parent_path_is_refused(daemon: Daemon) -> None:
    """../../usr/bin/rm, the relative form of the same trick."""
    assert _refused(daemon, ["../../usr/bin/rm", "x"]).rule == "tools.shell.allowed_commands"


def test_command_substitution_in_an_argument_is_not_evaluated(daemon: Daemon) -> None:
    """`$(...)` and backticks in an argument: argv is never given to a shell (prompt-injected
    command substitution, OWASP LLM Top 10 LLM01/LLM06 examples)."""
    marker = host_marker()
    with daemon.client() as c:
        r = c.run(["echo", f"$(touch {marker})", f"`touch {marker}`"], agent="dev", tool="shell")
    assert r.stdout == f"$(touch {marker}) `touch {marker}`\n".encode()
    assert not marker.exists()


def test_env_running_a_denied_command_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins env: `env rm FILE` runs rm under an allowed name; the jail still holds."""
    _confined(daemon, ["env", "rm", "-f", str(canary.path)])
    assert canary.untouched()


def test_find_exec_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins find: `find . -exec /bin/sh -c ... \\;`."""
    _confined(daemon, ["find", ".", "-maxdepth", "0", "-exec", "/bin/sh", "-c",
                       f"echo owned > {canary.path}", ";"])
    assert canary.untouched()


def test_xargs_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins xargs: `xargs -a /dev/null sh -c ...`."""
    _confined(daemon, ["xargs", "-a", "/dev/null", "sh", "-c", f"echo owned > {canary.path}"])
    assert canary.untouched()


def test_tar_checkpoint_action_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins tar: `--checkpoint-action=exec=...` runs a command while archiving."""
    _confined(daemon, ["tar", "-cf", "/dev/null", "/dev/null", "--checkpoint=1",
                       f"--checkpoint-action=exec=sh -c 'echo owned > {canary.path}'"])
    assert canary.untouched()


def test_awk_system_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins awk: `awk 'BEGIN {system(...)}'`."""
    _confined(daemon, ["awk", f'BEGIN {{system("echo owned > {canary.path}")}}'])
    assert canary.untouched()


def test_python_deleting_a_host_file_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins python: an allowed interpreter is every command at once."""
    _confined(daemon, ["python3", "-c", f"import os; os.remove({str(canary.path)!r})"])
    assert canary.untouched()


def test_nohup_running_a_denied_command_stays_in_the_jail(daemon: Daemon,
                                                          canary: Canary) -> None:
    """GTFOBins nohup: `nohup rm FILE`."""
    _confined(daemon, ["nohup", "rm", "-f", str(canary.path)])
    assert canary.untouched()


def test_timeout_running_a_denied_command_stays_in_the_jail(daemon: Daemon,
                                                            canary: Canary) -> None:
    """GTFOBins timeout: `timeout 7d rm FILE`."""
    _confined(daemon, ["timeout", "5", "rm", "-f", str(canary.path)])
    assert canary.untouched()


def test_git_config_alias_to_a_shell_stays_in_the_jail(daemon: Daemon, canary: Canary) -> None:
    """GTFOBins git, and the `git -c core.pager`/alias bypasses reported against coding
    agents' git allowlists: `git -c alias.x=!sh ... x`."""
    _confined(daemon, ["git", "-c", f"alias.x=!echo owned > {canary.path}", "x"])
    assert canary.untouched()
