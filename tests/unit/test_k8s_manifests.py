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


def fleet_policy() -> str:
    [configmap] = documents("configmap.yaml")
    text: str = configmap["data"]["policy.yaml"]
    return text


def test_configmap_carries_the_container_policy_with_a_cluster_only() -> None:
    """The same policy as a single container's, the fleet's server.cluster added."""
    fleet = yaml.safe_load(fleet_policy())
    fleet["server"].pop("cluster")
    assert fleet == yaml.safe_load((ROOT / "policies/container.yaml").read_text())


def test_fleet_policy_loads_with_the_deployments_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every ${VAR} of the policy comes from the Deployment: a Secret or the pod itself."""
    given = {e["name"] for e in container()["env"]} | {"EXECGATE_CI_KEY"}
    for name in given:
        monkeypatch.setenv(name, "10.1.2.3" if name == "POD_IP" else f"{name.lower()}-0123456789")
    monkeypatch.setenv("EXECGATE_REDIS_URL", "rediss://execgate:secret@redis.internal:6379/0")
    (tmp_path / "policy.yaml").write_text(fleet_policy())
    cluster = load_policy(tmp_path / "policy.yaml").config.server.cluster
    assert cluster is not None
    assert cluster.advertise == f"10.1.2.3:{container()['ports'][0]['containerPort']}"
    assert cluster.key_env in given
    assert set(re.findall(r"\$\{(\w+)", fleet_policy())) <= given


def test_redis_is_referenced_by_a_secret_never_run_here() -> None:
    """An existing Redis: its URL (with its password) from a Secret, no Redis workload."""
    env = {e["name"]: e["valueFrom"] for e in container()["env"]}
    assert env["EXECGATE_REDIS_URL"] == {
        "secretKeyRef": {"name": "execgate-fleet", "key": "redis-url"}}
    images = [c["image"] for m in MANIFESTS for d in documents(m.name)
              if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert images == ["execgate:0.1.0"]


def test_more_than_one_replica_spread_over_nodes() -> None:
    [deployment] = documents("deployment.yaml")
    assert deployment["spec"]["replicas"] > 1
    [spread] = pod()["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_disruptions_take_one_pod_at_a_time() -> None:
    [budget] = documents("poddisruptionbudget.yaml")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == pod_labels()


def test_headless_service_resolves_to_every_ready_pod() -> None:
    """For client-side balancing (dns:///): no cluster IP, not-ready pods left out."""
    headless = {d["metadata"]["name"]: d for d in documents("service.yaml")}["execgate-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == pod_labels()
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    [port] = headless["spec"]["ports"]
    assert port["targetPort"] == container()["ports"][0]["name"]


def test_network_policy_lets_pods_reach_each_other_and_redis() -> None:
    [policy] = documents("networkpolicy.yaml")
    [rule] = policy["spec"]["ingress"]
    assert {"podSelector": {"matchLabels": pod_labels()}} in rule["from"]
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]}
    assert {7878, 6379} <= egress_ports


def pod_labels() -> dict[str, str]:
    [deployment] = documents("deployment.yaml")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


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
