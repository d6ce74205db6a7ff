"""Config errors a person can act on: file, line and column of the offending key, its path,
what was expected, and the closest known name; all at once, sorted by line. And
``check-config --strict``, which counts warnings as errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from execgate.daemon.config import ConfigError, parse_policy

SHELL = "tools:\n  shell:\n    type: command\n    allowed_commands: [ls]\n"


def report(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "p.yaml", {})
    return info.value.report()


def test_a_typo_key_is_placed_and_gets_the_closest_key() -> None:
    found = report("tools:\n  shell:\n    type: command\n    allowed_comands: [ls]\n")
    assert found == ["p.yaml:4:5: tools.shell.allowed_comands: unknown key; did you mean "
                     "`allowed_commands`?"]


def test_an_unknown_key_with_no_close_one_lists_the_keys_expected() -> None:
    found = report("logger:\n  colour: red\n")
    assert len(found) == 1
    assert found[0].startswith("p.yaml:2:3: logger.colour: unknown key; expected one of: "
                               "level, format")


def test_a_typo_in_a_list_item_gets_the_closest_key() -> None:
    found = report("server:\n  auth:\n    api_keys:\n      - {nme: ci, key: k}\n")
    assert "p.yaml:4:10: server.auth.api_keys[0].nme: unknown key; did you mean `name`?" in found


def test_a_wrong_duration_is_placed_and_says_what_was_expected() -> None:
    found = report(SHELL + "    max_execution_time: 30 sec\n")
    assert found == ["p.yaml:5:5: tools.shell.max_execution_time: '30 sec' is not a duration "
                     "such as 30s, 2m, 1m30s or 500ms"]


def test_an_unquoted_yes_is_placed_and_explained() -> None:
    found = report(SHELL + "    description: yes\n")
    assert found == ["p.yaml:5:5: tools.shell.description: Input should be a valid string "
                     "(YAML reads unquoted yes/no/true/false/on/off as booleans: quote it)"]


def test_a_tool_missing_from_an_agents_list_suggests_a_defined_tool() -> None:
    found = report(SHELL + "agents:\n  dev:\n    tools: [ls, shel]\n")
    assert found == [
        "p.yaml:7:13: agents.dev.tools[0]: no tool named 'ls' is defined under tools",
        "p.yaml:7:17: agents.dev.tools[1]: no tool named 'shel' is defined under tools; "
        "did you mean `shell`?"]


def test_a_jwks_url_without_issuer_is_placed_at_its_block() -> None:
    found = report("server:\n  auth:\n    jwks_url: https://idp.example/jwks\n"
                   "    audience: execgate\n")
    assert found == ["p.yaml:2:3: server.auth: JWT authentication needs jwks_url, issuer and "
                     "audience together; missing: issuer"]


def test_a_missing_required_key_is_placed_at_its_parent() -> None:
    assert report("tools:\n  shell:\n    description: x\n") == [
        "p.yaml:2:3: tools.shell.type: a required key is missing"]


def test_a_yaml_syntax_error_is_placed_where_yaml_found_it() -> None:
    found = report("tools:\n  shell: [\n")
    assert found[0].startswith("p.yaml:3:1: not valid YAML: ")


def test_every_error_is_listed_at_once_sorted_by_line() -> None:
    """Problems from different checks (undefined tools, fields, a section's own checks)
    come in file order, whichever check found them."""
    found = report("agents:\n  dev: {tools: [shel]}\ntools:\n  shell:\n    type: command\n"
                   "  f:\n    type: function\n    handler: nope\n"
                   "server:\n  auth: {jwks_url: https://i/jwks}\nbogus: 1\n"
                   "approvals: {timeout: soon}\n")
    assert [int(p.split(":")[1]) for p in found] == [2, 8, 10, 11, 12]


def execgated(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (root / "workspace").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "execgate.daemon.cli", *args], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CI_KEY": "from-the-environment"})


def test_check_config_prints_each_error_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(SHELL + "    max_execution_tim: 30s\n")
    result = execgated(tmp_path, "check-config", "p.yaml")
    assert result.returncode == 2
    assert ("error: p.yaml:5:5: tools.shell.max_execution_tim: unknown key; did you mean "
            "`max_execution_time`?") in result.stderr


def test_host_problems_are_placed_at_their_key_too(tmp_path: Path) -> None:
    """preflight's problems (a jail that is not there) get the loaded file's marks."""
    (tmp_path / "p.yaml").write_text("server: {listen: ['127.0.0.1:0']}\n" + SHELL
                                     + "    working_directory: ./nowhere\n")
    result = execgated(tmp_path, "check-config", "p.yaml")
    assert "error: p.yaml:6:5: tools.shell.working_directory: " in result.stderr


LOOPBACK = "server: {listen: ['127.0.0.1:0']}\n"
# (the warning, a policy that loads but earns it, what the error names)
WARNED = [
    ("ignored LLM keys", LOOPBACK + "llms: {default: {model: gpt-4o}}\n", "p.yaml:2:1: llms:"),
    ("a literal API key", "server:\n  listen: ['127.0.0.1:0']\n  auth:\n"
     "    api_keys: [{name: ci, key: s3cret}]\n", "server.auth.api_keys[0].key: a secret"),
    ("a literal plain API key", "server:\n  listen: ['127.0.0.1:0']\n  auth:\n"
     "    api_keys: [s3cret]\n", "server.auth.api_keys[0]: a secret"),
    ("a literal LLM api_key", LOOPBACK + "llms: {default: {api_key: sk-123}}\n",
     "llms.default.api_key: a secret"),
    ("deny_by_default: false", LOOPBACK + "tools:\n  sh:\n    type: command\n"
     "    deny_by_default: false\n", "p.yaml:5:5: tools.sh.deny_by_default: false"),
    ("a tool with no limits", LOOPBACK + "tools:\n  sh:\n    type: command\n"
     "    allowed_commands: [ls]\n    sandbox:\n      limits: {cpu_time: null, memory: null,"
     " processes: null}\n", "tools.sh: runs with no cpu_time, memory, processes limit"),
]


@pytest.mark.parametrize(("policy", "named"), [(p, n) for _, p, n in WARNED],
                         ids=[w for w, _, _ in WARNED])
def test_strict_turns_each_warning_into_an_error(tmp_path: Path, policy: str,
                                                 named: str) -> None:
    (tmp_path / "p.yaml").write_text(policy)
    lenient = execgated(tmp_path, "check-config", "p.yaml")
    strict = execgated(tmp_path, "check-config", "--strict", "p.yaml")
    assert lenient.returncode == 0
    assert named in lenient.stdout
    assert strict.returncode == 2
    assert named in strict.stderr


def test_strict_passes_a_policy_that_earns_no_warning(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "server:\n  listen: ['127.0.0.1:0']\n  auth:\n    api_keys: [{name: ci, key: "
        "'${CI_KEY}'}, {name: n, sha256: "
        "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0}]\n"
        + SHELL.replace("shell", "sh"))
    result = execgated(tmp_path, "check-config", "--strict", "p.yaml")
    assert (result.returncode, result.stderr) == (0, "")
