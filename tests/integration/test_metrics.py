"""Prometheus metrics scraped over HTTP from a real daemon: counters move by exactly what
the test did, and labels stay low-cardinality."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from execgate.client import AuthenticationError, PolicyDeniedError
from tests.conftest import TEST_POLICY, Daemon, start_daemon

POLICY = TEST_POLICY.replace(
    "server:\n", "server:\n  observability: {metrics: {enabled: true, listen: "
                 "'127.0.0.1:0'}}\n", 1)
LABELS = {"agent", "tool", "outcome", "rule", "limit", "reason", "le"}
"""Every label the metrics may carry (``le``: histogram buckets)."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("metrics"), POLICY)
    yield d
    d.stop()


def _address(daemon: Daemon) -> str:
    """Where the daemon serves metrics, as it logged before serving (its stderr is read by a
    thread of its own: the line may arrive after the daemon said it serves)."""
    def said() -> list[str]:
        return [line for line in daemon.stderr_lines if '"metrics.listening"' in line]

    with daemon.said:
        daemon.said.wait_for(said, timeout=10)
    for line in said():
        return str(json.loads(line)["address"])
    raise AssertionError("the daemon did not say where metrics are served")


def _scrape(daemon: Daemon) -> Samples:
    with urllib.request.urlopen(f"http://{_address(daemon)}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _moved(before: Samples, after: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                    float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()
            if key[0].startswith("execgate_") and value != before.get(key, 0.0)}


def test_counters_move_by_exactly_what_the_calls_did(daemon: Daemon) -> None:
    before = _scrape(daemon)
    with daemon.client() as c:
        c.run(["true"], agent="dev")
        c.run(["false"], agent="dev")
        with pytest.raises(PolicyDeniedError):
            c.run(["rm", "x"], agent="dev")
    with daemon.client(token="not-a-key") as bad, pytest.raises(AuthenticationError):
        bad.agents()
    daemon.audit("run.exited", exit_code=1)  # the second run's end has been recorded
    moved = _moved(before, _scrape(daemon))
    counters = {k: v for k, v in moved.items() if k[0].endswith("_total")}
    assert counters == {
        ("execgate_calls_total", (("agent", "dev"), ("outcome", "exited"), ("tool", "shell"))):
            2.0,
        ("execgate_calls_total", (("agent", "dev"), ("outcome", "denied"),
                                  ("tool", "(unknown)"))): 1.0,  # argv named no tool
        ("execgate_denials_total", (("rule", "tools.shell.denied_commands"),)): 1.0,
        ("execgate_auth_failures_total", (("reason", "invalid_credentials"),)): 1.0,
    }
    assert moved[("execgate_run_duration_seconds_count", (("tool", "shell"),))] == 2.0


def test_spawn_and_queue_wait_histograms_count_each_run_once(daemon: Daemon) -> None:
    """Every run started is one spawn and one queue wait; a denied call is neither."""
    before = _scrape(daemon)
    with daemon.client() as c:
        c.run(["true"], agent="dev")
        c.run(["false"], agent="dev")
        with pytest.raises(PolicyDeniedError):
            c.run(["rm", "x"], agent="dev")
    moved = _moved(before, _scrape(daemon))
    counts = {k: v for k, v in moved.items() if k[0].endswith("_count")
              and k[0].startswith(("execgate_spawn_", "execgate_queue_wait_"))}
    assert counts == {("execgate_spawn_seconds_count", (("tool", "shell"),)): 2.0,
                      ("execgate_queue_wait_seconds_count", (("tool", "shell"),)): 2.0}


def test_nothing_is_running_once_calls_have_ended(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.run(["true"], agent="dev")
    assert _scrape(daemon)[("execgate_runs_running", ())] == 0.0


def test_the_process_collector_is_served(daemon: Daemon) -> None:
    assert _scrape(daemon)[("process_open_fds", ())] > 0


def test_labels_are_low_cardinality(daemon: Daemon) -> None:
    """No subject, run id, argv or caller-made name becomes a label."""
    with daemon.client() as c:
        run_id = c.run(["echo", "argv-marker"], agent="dev").run_id
        with pytest.raises(Exception, match="no agent"):
            c.run(["true"], agent="made-up-agent-name")
    samples = _scrape(daemon)
    names = {name for _, labels in samples for name, _ in labels}
    values = {value for _, labels in samples for _, value in labels}
    assert names <= LABELS
    for secret in ("tester", run_id, "argv-marker", "made-up-agent-name"):
        assert not any(secret in value for value in values)
