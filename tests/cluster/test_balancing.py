"""Client-side load balancing: a list of daemons (or a dns:/// name) is spread with gRPC's
round_robin policy, and a daemon whose health says NOT_SERVING (draining) gets no new call."""

from __future__ import annotations

import json
import queue
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from execgate.client import Client, OutputChunk, Started
from execgate.client._balancing import channel_target
from tests.conftest import API_KEY, Daemon, start_daemon

SLOW_DRAIN = {"DRAIN_TIMEOUT": "10m"}
CALLS = 8


def _named(root: Path, name: str, env: dict[str, str] | None = None) -> Daemon:
    """A daemon whose workspace holds a file saying which daemon it is."""
    root.mkdir()
    d = start_daemon(root, env=env)
    (d.workspace / "host").write_text(name)
    return d


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    one = _named(tmp_path / "one", "one", SLOW_DRAIN)
    two = _named(tmp_path / "two", "two")
    yield one, two
    one.stop()
    two.stop()


def _served(c: Client) -> Counter[str]:
    """Which daemons answered CALLS calls in turn."""
    return Counter(c.run(["cat", "host"], agent="dev", check=True).stdout.decode()
                   for _ in range(CALLS))


def _draining(d: Daemon) -> None:
    """Wait until the daemon says it drains (its health is NOT_SERVING by then)."""
    def said() -> bool:
        for line in list(d.stderr_lines):
            try:
                if json.loads(line).get("event") == "server.draining":
                    return True
            except ValueError:
                continue
        return False

    with d.said:
        assert d.said.wait_for(said, timeout=30)


def test_round_robin_spreads_calls_over_every_daemon(
        pair: tuple[Daemon, Daemon]) -> None:
    with Client([d.target for d in pair], token=API_KEY) as c:
        assert set(_served(c)) == {"one", "two"}


def test_a_comma_separated_target_is_a_list_of_daemons(
        pair: tuple[Daemon, Daemon]) -> None:
    """As $EXECGATE_TARGET or --target give it."""
    with Client(",".join(d.target for d in pair), token=API_KEY) as c:
        assert set(_served(c)) == {"one", "two"}


def test_a_draining_daemon_gets_no_new_calls(pair: tuple[Daemon, Daemon]) -> None:
    """A run keeps the first daemon draining (alive, health NOT_SERVING); every call made
    meanwhile goes to the other, none is refused."""
    one, two = pair
    stdin: queue.Queue[bytes | None] = queue.Queue()
    held = one.client().stream(["cat"], agent="dev", stdin=iter(stdin.get, None))
    assert isinstance(next(held), Started)
    one.proc.send_signal(signal.SIGTERM)
    _draining(one)
    with Client([one.target, two.target], token=API_KEY) as c:
        assert _served(c) == {"two": CALLS}
    assert one.proc.poll() is None  # still draining, its run going on
    stdin.put(b"bye")
    stdin.put(None)
    assert next(held) == OutputChunk("stdout", 0, b"bye")


def test_a_host_name_in_a_list_is_resolved_to_its_addresses() -> None:
    target, options = channel_target(["localhost:7878", "127.0.0.2:7879"])
    assert target.startswith("ipv")
    assert ("grpc.default_authority", "localhost:7878") in options


def test_a_single_address_keeps_one_connection_without_balancing() -> None:
    assert channel_target("127.0.0.1:7878") == ("127.0.0.1:7878", [])


def test_a_dns_target_is_balanced() -> None:
    target, options = channel_target("dns:///execgate-headless.execgate:7878")
    assert target == "dns:///execgate-headless.execgate:7878"
    assert any(name == "grpc.service_config" and "round_robin" in value
               for name, value in options)
