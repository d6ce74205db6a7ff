"""``python -m bench``, the side-by-side benchmark, in its quick form: it runs end to end and
writes every row (figures are never asserted: benchmarks are read by people)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
METRICS = ["true_p50", "true_p99", "stdout_throughput", "stdout_rss_growth", "concurrent_8",
           "concurrent_64", "first_byte"]
MEASURED = ["floor", "execgate", "execgate_off"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One quick run without SWE-ReX (nothing installed): its JSON and where its chart goes."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--skip-swerex",
                           "--json", str(out / "results.json"), "--png", str(out / "chart.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out / "chart.png"


def test_quick_run_writes_every_metric_as_a_row(quick_run: tuple[dict[str, Any], Path]) -> None:
    results, _ = quick_run
    assert [row["metric"] for row in results["rows"]] == METRICS


def test_quick_run_measures_floor_and_both_execgates(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    """Every row has a figure from each contender that ran, but 64-concurrent (not in --quick)
    and the floor's RSS growth (it has no server)."""
    results, _ = quick_run
    for row in results["rows"]:
        for name in MEASURED:
            value = row["values"][name]
            unmeasured = (row["metric"] == "concurrent_64"
                          or (name == "floor" and row["metric"] == "stdout_rss_growth"))
            assert (value is None) == unmeasured, (row["metric"], name, value)


def test_skipped_swerex_is_an_empty_column_with_the_reason(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    results, _ = quick_run
    assert all(row["values"]["swerex"] is None for row in results["rows"])
    assert results["skipped"]["SWE-ReX"] == "--skip-swerex"


def test_ratios_against_the_floor_are_the_values_divided(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    results, _ = quick_run
    p50 = next(row for row in results["rows"] if row["metric"] == "true_p50")
    expected = p50["values"]["execgate"] / p50["values"]["floor"]
    assert p50["ratios"]["execgate/floor"] == pytest.approx(expected)
    assert p50["ratios"]["execgate/swerex"] is None


def test_quick_run_draws_the_chart(quick_run: tuple[dict[str, Any], Path]) -> None:
    _, chart = quick_run
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (the bench extra): no chart to check")
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
