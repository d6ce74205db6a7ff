"""deploy/kubernetes/ and the Dockerfile: valid against Kubernetes' own schema (strict: no
unknown fields), and saying what the sandbox needs. Docker and a cluster are not needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from execgate.daemon.config import load_policy
from execgate.daemon.config._schema import ServerConfig, ToolConfig

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES = "1.33.0"
"""The oldest Kubernetes the manifests are for: pod user namespaces (hostUsers: false, which
procMount: Unmasked needs) are on by default from 1.33."""


def documents(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / name).read_text()))


def pod() -> dict[str, Any]:
    [deployment] = documents("deployment.yaml")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    [execgated] = pod()["containers"]
    assert isinstance(execgated, dict)
    return execgated


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_is_valid_against_the_kubernetes_schema(manifest: Path) -> None:
    for document in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_configmap_carries_the_container_policy_unchanged() -> None:
    [configmap] = documents("configmap.yaml")
    assert configmap["data"]["policy.yaml"] == (ROOT / "policies/container.yaml").read_text()


def test_container_policy_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECGATE_CI_KEY", "a-key-for-the-example-0123456789")
    server = load_policy(ROOT / "policies/container.yaml").config.server
    assert server.listen == ["0.0.0.0:7878"]
    assert "/health" in server.auth.excluded_paths


def test_probes_ask_the_grpc_health_service_on_the_serving_port() -> None:
    [port] = container()["ports"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"] == {"port": port["containerPort"]}


def test_container_security_context_is_what_the_sandbox_needs() -> None:
    """Namespaces need seccomp and AppArmor unconfined, a job's /proc needs an unmasked /proc
    (which needs a pod user namespace); nothing else is granted."""
    context = container()["securityContext"]
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert context["appArmorProfile"] == {"type": "Unconfined"}
    assert context["procMount"] == "Unmasked"
    assert pod()["hostUsers"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert pod()["securityContext"]["runAsNonRoot"] is True


def test_secrets_are_referenced_never_included() -> None:
    assert container()["envFrom"] == [{"secretRef": {"name": "execgate-api-keys"}}]
    volumes = {v["name"]: v for v in pod()["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "execgate-tls"
    kinds = {d["kind"] for m in MANIFESTS for d in documents(m.name)}
    assert "Secret" not in kinds


def test_grace_period_outlasts_the_drain() -> None:
    drain = ServerConfig().drain_timeout + ToolConfig.model_fields["kill_grace"].default
    assert pod()["terminationGracePeriodSeconds"] > drain


def test_network_policy_admits_agents_on_the_serving_port_only() -> None:
    [policy] = documents("networkpolicy.yaml")
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": container()["ports"][0]["containerPort"]}]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def dockerfile() -> dict[str, list[str]]:
    """The final stage's instructions, by name (a name may repeat)."""
    final = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    found: dict[str, list[str]] = {"FROM": [final.splitlines()[0]]}
    for line in re.sub(r"\\\n", " ", final).splitlines()[1:]:
        if line and not line.startswith("#"):
            name, _, rest = line.partition(" ")
            found.setdefault(name, []).append(rest.strip())
    return found


def test_image_is_python_slim_and_runs_unprivileged() -> None:
    assert dockerfile()["FROM"] == ["python:3.11-slim"]
    assert dockerfile()["USER"] == ["10001:10001"]
    assert pod()["securityContext"]["runAsUser"] == 10001


def test_image_runs_execgated_as_pid_1_and_stops_it_with_sigterm() -> None:
    """Exec form (no shell between, so SIGTERM reaches the daemon and it drains)."""
    assert json.loads(dockerfile()["ENTRYPOINT"][0]) == ["/usr/local/bin/execgated"]
    assert json.loads(dockerfile()["CMD"][0])[0] == "serve"
    assert dockerfile()["STOPSIGNAL"] == ["SIGTERM"]
