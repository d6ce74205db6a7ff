"""A daemon with server.cluster joins the fleet: its lease in Redis, checked config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from execgate.daemon.config import PolicyConfig
from execgate.daemon.snapshot import keep_restart_only
from tests.cluster.conftest import Fleet, RedisServer, cluster_policy
from tests.conftest import TEST_POLICY


def test_each_host_holds_its_lease_with_its_advertised_address(
        fleet: Fleet, redis_server: RedisServer) -> None:
    """Every host's key is namespaced and expires unless refreshed."""
    with redis.Redis(unix_socket_path=str(redis_server.socket)) as r:
        for n in (1, 2, 3):
            assert r.get(f"execgate:host:host-{n}") == b"127.0.0.1:1"
            assert 0 < r.pttl(f"execgate:host:host-{n}") <= 3000


def test_a_stopped_host_withdraws_its_lease(fleet: Fleet, redis_server: RedisServer) -> None:
    fleet.hosts[2].stop()
    with redis.Redis(unix_socket_path=str(redis_server.socket)) as r:
        assert r.get("execgate:host:host-3") is None
        assert r.get("execgate:host:host-1") is not None


def _check_config(root: Path, policy: str, secret: bool = True) -> tuple[int, str]:
    """``execgated check-config`` on ``policy`` (with the fleet secret set, or not): its exit
    status and what it said."""
    (root / "workspace").mkdir()
    (root / "policy.yaml").write_text(policy)
    env = {"PATH": "/usr/bin:/bin", "TEST_API_KEY": "k" * 20}
    if secret:
        env["EXECGATE_CLUSTER_KEY"] = "s" * 20
    result = subprocess.run(
        [sys.executable, "-m", "execgate.daemon.cli", "check-config", str(root / "policy.yaml")],
        cwd=root, capture_output=True, text=True, env=env, timeout=60)
    return result.returncode, result.stderr + result.stdout


def test_check_config_requires_the_fleet_secret(tmp_path: Path) -> None:
    status, said = _check_config(
        tmp_path, cluster_policy("unix:///nowhere.sock", "host-1", policy=TEST_POLICY),
        secret=False)
    assert status != 0
    assert "server.cluster.key_env: set EXECGATE_CLUSTER_KEY" in said


def test_a_redis_url_of_another_scheme_is_refused(tmp_path: Path) -> None:
    status, said = _check_config(
        tmp_path, cluster_policy("http://redis:6379", "host-1", policy=TEST_POLICY))
    assert status != 0
    assert "is not a Redis URL" in said


def test_a_fleet_of_tls_only_daemons_is_refused_with_its_reason(tmp_path: Path) -> None:
    """Hops are plaintext gRPC to the advertise address: a TLS-only peer would refuse every
    forwarded call, so the combination is refused at start, not at the first attach."""
    status, said = _check_config(tmp_path, cluster_policy(
        "unix:///nowhere.sock", "host-1", policy=TEST_POLICY,
        extra_server="  tls: {cert: /nowhere/cert.pem, key: /nowhere/key.pem}\n"))
    assert status != 0
    assert "server.cluster with server.tls" in said


def test_a_reload_keeps_the_fleet_it_started_in_and_says_so() -> None:
    """The Redis connection and the host's name are made once, at start."""
    base = {"tools": {"shell": {"type": "command", "allowed_commands": ["true"]}},
            "agents": {"dev": {"tools": ["shell"]}}}
    cluster = {"redis_url": "unix:///run/redis.sock", "host_id": "a", "advertise": "h:1"}
    old = PolicyConfig.model_validate({**base, "server": {"cluster": cluster}})
    new = PolicyConfig.model_validate(
        {**base, "server": {"cluster": {**cluster, "host_id": "b"}}})
    kept, changed = keep_restart_only(old, new)
    assert changed == ["server.cluster"]
    assert kept.server.cluster == old.server.cluster
