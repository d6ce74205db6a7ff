"""A minute of mixed load on a real daemon: nothing unexpected, nothing leaked, every run
audited once (bench/soak.py; run it by hand for longer, with more clients)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak

CLIENTS = 4
SECONDS = 60.0
WARMUP = 15.0


@pytest.mark.soak
def test_a_minute_of_mixed_load_leaves_nothing_behind(tmp_path: Path) -> None:
    report = soak(tmp_path, CLIENTS, SECONDS, warmup=WARMUP)
    print(report.text())
    assert report.problems == []
