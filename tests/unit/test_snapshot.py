"""What a reload carries over from the policy in force, and what it cannot change."""

from __future__ import annotations

from pathlib import Path

from execgate.daemon.config import PolicyConfig
from execgate.daemon.policy import Policy
from execgate.daemon.snapshot import Current, build, keep_restart_only

BASE = {"tools": {"shell": {"type": "command", "allowed_commands": ["true"]}},
        "agents": {"dev": {"tools": ["shell"]}},
        "server": {"listen": ["127.0.0.1:7878"], "rate_limiting": {"burst": 2}}}


def _config(**server: object) -> PolicyConfig:
    return PolicyConfig.model_validate({**BASE, "server": {**BASE["server"], **server}})


def test_restart_only_settings_keep_their_old_value_and_are_named() -> None:
    old = _config()
    new = _config(listen=["127.0.0.1:9999"], max_concurrent_runs=1, drain_timeout="3s")
    kept, changed = keep_restart_only(old, new)
    assert changed == ["server.listen", "server.max_concurrent_runs"]
    assert kept.server.listen == ["127.0.0.1:7878"]
    assert kept.server.max_concurrent_runs == old.server.max_concurrent_runs
    assert kept.server.drain_timeout == 3.0  # reloadable: the new value


def test_an_unchanged_policy_needs_no_restart() -> None:
    assert keep_restart_only(_config(), _config())[1] == []


async def test_unchanged_limits_keep_their_state_across_a_reload(tmp_path: Path) -> None:
    config = _config()
    first = await build(config, Policy(config, tmp_path))
    second = await build(config, Policy(config, tmp_path), first)
    assert second.limiter is first.limiter
    assert second.failed is first.failed
    assert second.authenticator is not first.authenticator


async def test_changed_rate_limits_start_afresh(tmp_path: Path) -> None:
    first = await build(_config(), Policy(_config(), tmp_path))
    changed = _config(rate_limiting={"burst": 5})
    assert (await build(changed, Policy(changed, tmp_path), first)).limiter is not first.limiter


async def test_a_call_keeps_the_snapshot_it_first_read(tmp_path: Path) -> None:
    """A reload between two steps of one call does not mix two policies."""
    config = _config()
    first = await build(config, Policy(config, tmp_path))
    current = Current(first)
    assert current.get() is first
    current.snapshot = await build(config, Policy(config, tmp_path), first)
    assert current.get() is first
