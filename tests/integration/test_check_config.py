"""check-config and serve agree: what serve refuses, check-config reports (one validation
behind both), every problem at once, exit 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from execgate.client import AuthenticationError
from tests.conftest import API_KEY, TEST_POLICY, start_daemon

PRODUCTION = Path(__file__).resolve().parents[2] / "policies" / "production.yaml"
LOOPBACK = "server:\n  listen: ['127.0.0.1:0']\n"
SHELL = "tools:\n  sh:\n    type: command\n    allowed_commands: ['true']\n"

# (what is wrong, the policy, what the refusal names)
REFUSED = [
    ("missing working directory", LOOPBACK + "tools:\n  sh:\n    type: command\n"
     "    working_directory: ./nowhere\n", "tools.sh.working_directory"),
    ("unknown run_as user", LOOPBACK + SHELL + "sandbox:\n  run_as: no-such-user-x\n",
     "tools.sh.sandbox.run_as"),
    ("jwks_url over plain http to a remote host",
     "server:\n  listen: ['127.0.0.1:0']\n  auth:\n    jwks_url: http://idp.example/jwks\n"
     "    issuer: https://idp.example/\n    audience: a\n", "server.auth.jwks_url"),
    ("plaintext on 0.0.0.0", "server:\n  listen: ['0.0.0.0:0']\n", "only served on loopback"),
    ("version 1", LOOPBACK + 'version: "1"\n', 'version: only "2" is supported'),
    ("version 99", LOOPBACK + 'version: "99"\n', 'version: only "2" is supported'),
    ("processes past pids.max and the wire",
     LOOPBACK + SHELL + "sandbox:\n  limits: {processes: 8589934592}\n",
     "sandbox.limits.processes"),
    ("open_files below what a job's init holds",
     LOOPBACK + SHELL + "sandbox:\n  limits: {open_files: 8}\n",
     "sandbox.limits.open_files: Input should be greater than or equal to 16"),
    ("open_files past this host's fs.nr_open",
     LOOPBACK + SHELL + "sandbox:\n  limits: {open_files: 2147483584}\n", "fs.nr_open"),
    ("require_auth with no way to authenticate", "server:\n  listen: ['127.0.0.1:0']\n"
     "  auth: {require_auth: true}\n", "no caller can authenticate"),
    ("a TLS key that is not there", "server:\n  listen: ['127.0.0.1:0']\n"
     "  tls: {cert: ./missing.pem, key: ./missing.key}\n", "server.tls.cert"),
    ("an undefined tool", LOOPBACK + SHELL + "agents:\n  a: {tools: [sh, shel]}\n",
     "agents.a.tools[1]"),
    ("a list used as a key", LOOPBACK + "? [a, b]\n: 1\n", "a key must be a plain value"),
    ("a recursive alias", LOOPBACK + "agents:\n  a: &a {tools: [*a]}\n", "recursive alias"),
    ("an integer of thousands of digits", LOOPBACK + SHELL + "sandbox:\n  limits:\n"
     f"    open_files: {'9' * 5000}\n", "integer too long"),
    ("a NaN duration", LOOPBACK + "tools:\n  sh:\n    type: command\n"
     "    max_execution_time: .nan\n", "tools.sh.max_execution_time"),
]


def execgated(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """execgated in ``root``, where the jail ./workspace exists; serve would run forever, so a
    command still running after a minute is a failure, not a wait."""
    (root / "workspace").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "execgate.daemon.cli", *args], cwd=root,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("policy", "named"), [(p, n) for _, p, n in REFUSED],
                         ids=[w for w, _, _ in REFUSED])
def test_check_config_reports_what_serve_refuses(tmp_path: Path, policy: str,
                                                 named: str) -> None:
    (tmp_path / "p.yaml").write_text(policy)
    checked = execgated(tmp_path, "check-config", "p.yaml")
    served = execgated(tmp_path, "serve", "--config", "p.yaml")
    assert (checked.returncode, served.returncode) == (2, 2)
    assert named in checked.stderr
    assert named in served.stderr
    assert "Traceback" not in checked.stderr + served.stderr


def test_check_config_lists_every_problem_at_once(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        'version: "1"\nserver:\n  listen: ["0.0.0.0:7878"]\n'
        "tools:\n  sh:\n    type: command\n    working_directory: ./nowhere\n"
        "  ok:\n    type: command\n    sandbox: {run_as: no-such-user-x}\n")
    result = execgated(tmp_path, "check-config", "p.yaml")
    assert result.returncode == 2
    for named in ("version", "0.0.0.0:7878", "tools.sh.working_directory",
                  "tools.ok.sandbox.run_as"):
        assert named in result.stderr


def test_check_config_takes_the_listen_addresses_serve_would(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(SHELL)
    assert "nowhere to listen" in execgated(tmp_path, "check-config", "p.yaml").stderr
    result = execgated(tmp_path, "check-config", "p.yaml", "--listen", "127.0.0.1:7878")
    assert result.returncode == 0


def test_require_auth_over_a_unix_socket_alone_is_valid(tmp_path: Path) -> None:
    """A unix peer is known by its uid: require_auth then needs no key."""
    (tmp_path / "p.yaml").write_text(f"server:\n  listen: ['unix:{tmp_path}/s']\n"
                                     "  auth: {require_auth: true}\n")
    assert execgated(tmp_path, "check-config", "p.yaml").returncode == 0


def test_check_config_accepts_the_production_example_where_it_is_served(
        tmp_path: Path) -> None:
    result = execgated(tmp_path, "check-config", str(PRODUCTION))
    assert result.returncode == 0, result.stderr
    assert f"{PRODUCTION}: valid" in result.stdout


def test_api_keys_without_enabled_refuse_anonymous_callers(tmp_path: Path) -> None:
    """The auth block's keys switch authentication on by themselves."""
    policy = TEST_POLICY.replace("    enabled: true\n", "", 1)
    assert policy != TEST_POLICY
    d = start_daemon(tmp_path, policy)
    try:
        with d.client(token="") as c, pytest.raises(AuthenticationError):
            c.run(["true"], agent="dev")
        with d.client(token=API_KEY) as c:
            assert c.run(["true"], agent="dev").exit_code == 0
    finally:
        d.stop()
