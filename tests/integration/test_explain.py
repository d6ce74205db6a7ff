"""``execgated explain`` agrees with the real daemon: the same policy, the same calls, the
same verdicts and rules (it runs the daemon's own decision code, and this keeps it so)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from execgate.client import ApprovalRequested, Client, RPCError, Started
from execgate.daemon.cli import main
from tests.conftest import API_KEY, HAS_CGROUP, Daemon, start_daemon, writable_by_commands

CI_KEY = "ci-key-0123456789"
POLICY = """\
version: "2"
sandbox:
  cgroup: ${CGROUP:-required}
tools:
  shell:
    type: command
    allowed_commands: [echo, "true", ls, missing-command-xyz]
    denied_commands: [rm]
    require_approval_for: ["echo push"]
    approval_prompt: "Run {command} in {cwd}?"
  loose:
    type: command
    deny_by_default: false
    denied_commands: [rm]
  gated:
    type: command
    allowed_commands: [echo]
    require_approval: true
  read_file: {type: function}
  write_file: {type: function, require_approval: true, approval_prompt: "Write {file}?"}
  list_directory: {type: function}
  grep_search: {type: function}
agents:
  dev: {tools: [shell, loose, gated, read_file, write_file, list_directory, grep_search]}
  ops: {visibility: internal, tools: [shell]}
  helper: {visibility: private, tools: [shell]}
  team: {tools: [shell], allow: [{subject: ci}]}
server:
  unix_uids: [${UID}]
  auth:
    require_auth: false
    api_keys: [{name: tester, key: "${TEST_API_KEY}"}, {name: ci, key: "${CI_KEY}"}]
logger: {level: info, format: json}
"""


@dataclass(frozen=True)
class Case:
    """One call: who makes it (key, ci, anonymous, unix, bad-key) and what it asks."""

    who: str
    agent: str
    tool: str = ""
    argv: tuple[str, ...] = ()
    arguments: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    "allowed command": Case("key", "dev", "shell", ("echo", "hi")),
    "denied command": Case("key", "dev", "shell", ("rm", "x")),
    "command not allowed": Case("key", "dev", "shell", ("curl", "x")),
    "command not on PATH": Case("key", "dev", "shell", ("missing-command-xyz",)),
    "argv prefix needing approval": Case("key", "dev", "shell", ("echo", "push")),
    "argv beside the approval prefix": Case("key", "dev", "shell", ("echo", "pull")),
    "open tool runs what is not denied": Case("key", "dev", "loose", ("ls",)),
    "open tool still denies": Case("key", "dev", "loose", ("rm", "-rf", "x")),
    "tool needing approval": Case("key", "dev", "gated", ("echo", "x")),
    "cwd inside the jail": Case("key", "dev", "shell", ("ls",), cwd="sub"),
    "cwd above the jail": Case("key", "dev", "shell", ("ls",), cwd="../"),
    "cwd through a symlink out": Case("key", "dev", "shell", ("ls",), cwd="out"),
    "cwd that does not exist": Case("key", "dev", "shell", ("ls",), cwd="nope"),
    "absolute cwd": Case("key", "dev", "shell", ("ls",), cwd="/etc"),
    "a loader hook in env": Case("key", "dev", "shell", ("ls",), env={"LD_PRELOAD": "x.so"}),
    "a plain env variable": Case("key", "dev", "shell", ("ls",), env={"COLOR": "1"}),
    "unknown agent": Case("key", "nosuch", "shell", ("ls",)),
    "unknown tool": Case("key", "dev", "nosuch", ("ls",)),
    "unnamed tool of several": Case("key", "dev", "", ("ls",)),
    "argv to a function tool": Case("key", "dev", "read_file", ("ls",)),
    "internal agent, anonymous": Case("anonymous", "ops", "shell", ("ls",)),
    "internal agent, with a key": Case("key", "ops", "shell", ("ls",)),
    "public agent, anonymous": Case("anonymous", "dev", "shell", ("ls",)),
    "private agent over TCP": Case("key", "helper", "shell", ("ls",)),
    "private agent over the unix socket": Case("unix", "helper", "shell", ("ls",)),
    "private agent, anonymous": Case("anonymous", "helper", "shell", ("ls",)),
    "allow rule not matched": Case("key", "team", "shell", ("ls",)),
    "allow rule matched": Case("ci", "team", "shell", ("ls",)),
    "a wrong credential": Case("bad-key", "dev", "shell", ("ls",)),
    "read a file": Case("key", "dev", "read_file", arguments={"path": "notes.txt"}),
    "read above the jail": Case("key", "dev", "read_file", arguments={"path": "../x"}),
    "read without a path": Case("key", "dev", "read_file", arguments={}),
    "read with an unknown argument": Case("key", "dev", "read_file",
                                          arguments={"path": "notes.txt", "colour": "red"}),
    "write needing approval": Case("key", "dev", "write_file",
                                   arguments={"path": "new.txt", "content": "x"}),
    "write an absolute path": Case("key", "dev", "write_file",
                                   arguments={"path": "/etc/passwd", "content": "x"}),
    "list the jail": Case("key", "dev", "list_directory", arguments={}),
    "grep the jail": Case("key", "dev", "grep_search", arguments={"pattern": "hello"}),
    "grep with a bad flag": Case("key", "dev", "grep_search",
                                 arguments={"pattern": "x", "ignore_case": "maybe"}),
}
TOKENS = {"key": API_KEY, "ci": CI_KEY, "anonymous": "", "bad-key": "not-a-key"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("explain")
    (root / "workspace").mkdir()
    (root / "workspace" / "sub").mkdir()
    (root / "workspace" / "notes.txt").write_text("hello\n")
    (root / "workspace" / "out").symlink_to("/etc")
    writable_by_commands(root / "workspace")
    d = start_daemon(root, POLICY.replace("${UID}", str(os.geteuid())),
                     env={"CI_KEY": CI_KEY},
                     extra_args=("--listen", f"unix:{root / 'execgate.sock'}"))
    yield d
    d.stop()


def real_verdict(d: Daemon, case: Case) -> dict[str, object]:
    """What the daemon did: allow (it started), ask (with its prompt) or deny (kind, rule)."""
    target = f"unix:{d.root / 'execgate.sock'}" if case.who == "unix" else d.target
    with Client(target, token=TOKENS.get(case.who, "")) as client:
        try:
            for event in client.stream(list(case.argv) or None, agent=case.agent,
                                       tool=case.tool, arguments=case.arguments or None,
                                       cwd=case.cwd, env=case.env or None,
                                       on_approval=lambda request: False):
                if isinstance(event, ApprovalRequested):
                    return {"decision": "ask", "prompt": event.prompt}
                if isinstance(event, Started):
                    return {"decision": "allow"}
        except RPCError as exc:
            return {"decision": "deny", "kind": exc.error, "rule": exc.rule}
    raise AssertionError("the call ended without starting, asking or being refused")


def explained(d: Daemon, case: Case, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What ``execgated explain --json`` says, run from the daemon's directory."""
    monkeypatch.chdir(d.root)
    monkeypatch.setenv("TEST_API_KEY", API_KEY)
    monkeypatch.setenv("CI_KEY", CI_KEY)
    monkeypatch.setenv("CGROUP", "required" if HAS_CGROUP else "optional")
    (d.root / "explain.yaml").write_text(POLICY.replace("${UID}", str(os.geteuid())))
    args = ["explain", "--config", "explain.yaml", "--json", "--agent", case.agent]
    args += ["--tool", case.tool] if case.tool else []
    args += ["--cwd", case.cwd] if case.cwd else []
    args += [f"--env={k}={v}" for k, v in case.env.items()]
    if case.who == "unix":
        args += ["--as", f"uid:{os.geteuid()}"]
    elif TOKENS[case.who]:
        args += ["--token", TOKENS[case.who]]
    args += ["--", *case.argv, *(f"{k}={v}" for k, v in case.arguments.items())]
    status = main(args)
    out = json.loads(capsys.readouterr().out)
    assert status == {"allow": 0, "deny": 1, "ask": 3}[out["decision"]]
    if out["decision"] == "deny":
        return {"decision": "deny", "kind": out["kind"], "rule": out["rule"]}
    if out["decision"] == "ask":
        return {"decision": "ask", "prompt": out["approval_prompt"]}
    return {"decision": "allow"}


def test_the_table_covers_every_verdict_and_at_least_30_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_explain_agrees_with_the_daemon(served: Daemon, name: str,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    assert explained(served, case, capsys, monkeypatch) == real_verdict(served, case)


def explain_json(root: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    monkeypatch.chdir(root)
    monkeypatch.setenv("TEST_API_KEY", API_KEY)
    monkeypatch.setenv("CI_KEY", CI_KEY)
    monkeypatch.setenv("CGROUP", "optional")
    (root / "workspace").mkdir(exist_ok=True)
    (root / "p.yaml").write_text(POLICY.replace("${UID}", str(os.geteuid())))
    main(["explain", "--config", "p.yaml", "--json", "--as", "tester", *args])
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_explain_shows_what_would_run_and_under_which_sandbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = explain_json(tmp_path, monkeypatch, capsys, "--agent", "dev", "--tool", "shell",
                       "--env", "COLOR=1", "--", "echo", "hi")
    assert (out["decision"], out["rule"]) == ("allow", "tools.shell.allowed_commands")
    assert out["executable"] == "/usr/bin/echo"
    assert out["cwd"] == str((tmp_path / "workspace").resolve())
    assert "COLOR" in out["env"] and "PATH" in out["env"]  # type: ignore[operator]
    sandbox = out["sandbox"]
    assert isinstance(sandbox, dict)
    assert sandbox["host_checked"] is True
    assert set(sandbox["layers"]) == {"filesystem", "namespaces", "view", "cgroup"}
    assert sandbox["limits"]["processes"] == 256


def test_explain_without_the_host_says_the_layers_were_not_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = explain_json(tmp_path, monkeypatch, capsys, "--no-host", "--agent", "dev",
                       "--tool", "shell", "--", "echo", "hi")
    sandbox = out["sandbox"]
    assert isinstance(sandbox, dict)
    assert (sandbox["layers"], sandbox["host_checked"]) == (None, False)


def test_explain_renders_the_approval_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = explain_json(tmp_path, monkeypatch, capsys, "--agent", "dev", "--tool", "write_file",
                       "--", "path=a.txt", "content=x")
    assert (out["decision"], out["rule"]) == ("ask", "tools.write_file.require_approval")
    assert out["approval_prompt"] == "Write a.txt?"


def test_explain_refuses_a_caller_no_allow_rule_admits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = explain_json(tmp_path, monkeypatch, capsys, "--agent", "team", "--", "ls")
    assert (out["decision"], out["kind"], out["rule"]) == (
        "deny", "permission_denied", "agents.team.allow")
