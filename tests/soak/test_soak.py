"""A minute of mixed load on a real daemon: nothing unexpected, nothing leaked, every run
audited once (bench/soak.py; run it by hand for longer, with more clients)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

CLIENTS = 4
SECONDS = 60.0
WARMUP = 15.0


def _bench_soak() -> ModuleType:
    """bench/soak.py, which is a script beside the package, not part of it."""
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("execgate_bench_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.soak
def test_a_minute_of_mixed_load_leaves_nothing_behind(tmp_path: Path) -> None:
    report = _bench_soak().soak(tmp_path, CLIENTS, SECONDS, warmup=WARMUP)
    print(report.text())
    assert report.problems == []
