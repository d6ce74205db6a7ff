"""TLS and mutual TLS listeners, with certificates the tests make."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import Client, PermissionDeniedError, TLSConfig, UnavailableError
from tests.certs import CertificateAuthority, Issued
from tests.conftest import API_KEY, Daemon, start_daemon

POLICY = """\
version: "2"
tools:
  shell: {type: command, allowed_commands: [echo]}
agents:
  dev: {tools: [shell]}
  fleet:
    tools: [shell]
    allow: [{subject: "spiffe://example.org/agent-a"}]
server:
  tls:
    cert: "${CERT}"
    key: "${KEY}"
    client_ca: "${CLIENT_CA:-}"
  auth:
    enabled: true
    api_keys: [{name: ci, key: "${TEST_API_KEY}"}]
sandbox: {cgroup: optional}
logger: {level: info, format: json}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    other = CertificateAuthority(folder, "another CA")
    return {
        "ca": ca, "server": ca.server(),
        "uri": ca.issue("agent-a", uris=("spiffe://example.org/agent-a",),
                        dns=("agent-a.example.org",)),
        "dns": ca.issue("agent-b", dns=("agent-b.example.org",)),
        "cn": ca.issue("agent-c", common_name="agent-c"),
        "expired": ca.issue("old", uris=("spiffe://example.org/old",), expired=True),
        "foreign": other.issue("intruder", uris=("spiffe://example.org/agent-a",)),
    }


def _env(pki: dict[str, object], mutual: bool) -> dict[str, str]:
    server: Issued = pki["server"]  # type: ignore[assignment]
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    return {"CERT": str(server.cert), "KEY": str(server.key),
            "CLIENT_CA": str(ca.cert) if mutual else ""}


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, object]) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("mtls"), POLICY, env=_env(pki, mutual=True))
    yield d
    d.stop()


def tls(pki: dict[str, object], client: str | None = None) -> TLSConfig:
    ca: CertificateAuthority = pki["ca"]  # type: ignore[assignment]
    if client is None:
        return TLSConfig(ca=str(ca.cert))
    issued: Issued = pki[client]  # type: ignore[assignment]
    return TLSConfig(ca=str(ca.cert), cert=str(issued.cert), key=str(issued.key))


def run(daemon: Daemon, config: TLSConfig | None, token: str = "", agent: str = "dev") -> str:
    with Client(daemon.target, token=token, tls=config) as c:
        run_id = c.run(["echo", "ok"], agent=agent).run_id
    return str(daemon.audit("run.started", run_id=run_id)[0]["subject"])


@pytest.mark.parametrize(("client", "subject"), [
    ("uri", "spiffe://example.org/agent-a"), ("dns", "agent-b.example.org"),
    ("cn", "agent-c")])
def test_a_client_certificate_authenticates_as_its_identity(
        mtls: Daemon, pki: dict[str, object], client: str, subject: str) -> None:
    """URI SAN first, then DNS SAN, then CN."""
    assert run(mtls, tls(pki, client)) == subject


def test_a_bearer_token_on_an_mtls_connection_decides_the_identity(
        mtls: Daemon, pki: dict[str, object]) -> None:
    assert run(mtls, tls(pki, "uri"), token=API_KEY) == "ci"


@pytest.mark.parametrize("client", [None, "expired", "foreign"])
def test_no_expired_or_foreign_client_certificate_is_refused(
        mtls: Daemon, pki: dict[str, object], client: str | None) -> None:
    with pytest.raises(UnavailableError):
        run(mtls, tls(pki, client), token=API_KEY)


def test_plaintext_to_a_tls_port_fails(mtls: Daemon) -> None:
    with pytest.raises(UnavailableError):
        run(mtls, None, token=API_KEY)


def test_an_allow_rule_names_a_certificate_identity(mtls: Daemon,
                                                    pki: dict[str, object]) -> None:
    assert run(mtls, tls(pki, "uri"), agent="fleet") == "spiffe://example.org/agent-a"
    with pytest.raises(PermissionDeniedError):
        run(mtls, tls(pki, "dns"), agent="fleet")


def test_tls_without_client_certificates_takes_bearer_tokens(
        tmp_path: Path, pki: dict[str, object]) -> None:
    d = start_daemon(tmp_path, POLICY, env=_env(pki, mutual=False))
    try:
        assert run(d, tls(pki), token=API_KEY) == "ci"
    finally:
        d.stop()


def test_a_replaced_certificate_is_used_without_a_restart(
        tmp_path: Path, pki: dict[str, object]) -> None:
    live = CertificateAuthority(tmp_path, "first CA").server("live")
    d = start_daemon(tmp_path, POLICY, env={"CERT": str(live.cert), "KEY": str(live.key)})
    try:
        second_ca = CertificateAuthority(tmp_path, "second CA")
        rotated = second_ca.server("rotated")
        os.replace(rotated.key, live.key)
        os.replace(rotated.cert, live.cert)
        assert run(d, TLSConfig(ca=str(second_ca.cert)), token=API_KEY) == "ci"
    finally:
        d.stop()


def test_execgate_run_speaks_mutual_tls(mtls: Daemon, pki: dict[str, object]) -> None:
    config = tls(pki, "uri")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")}
    result = subprocess.run(
        [sys.executable, "-m", "execgate.client._cli", "run", "--target", mtls.target,
         "--ca", str(config.ca), "--cert", str(config.cert), "--key", str(config.key),
         "--agent", "dev", "--", "echo", "over mtls"], capture_output=True, env=env,
        timeout=60)
    assert (result.returncode, result.stdout) == (0, b"over mtls\n")


def test_plaintext_is_refused_on_a_non_loopback_address_but_tls_is_not(
        tmp_path: Path, pki: dict[str, object]) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "p.yaml").write_text("tools: {}\n")
    plain = subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "serve", "--config",
                            str(tmp_path / "p.yaml"), "--listen", "0.0.0.0:0"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert plain.returncode == 2
    assert "configure server.tls" in plain.stderr


def test_remote_plaintext_can_be_forced(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "tools: {}\nserver: {allow_remote_plaintext: true}\n",
                     extra_args=("--listen", "0.0.0.0:0"))
    try:
        assert any("allow_remote_plaintext" in line for line in d.stderr_lines)
    finally:
        d.stop()
