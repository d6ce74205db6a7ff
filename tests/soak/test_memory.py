"""What the daemon keeps per call, seen from inside it by bench/_memprobe (bench_memory.py
measures the same per kind of call, at length)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_memory import probe, probed
from execgate.client import PolicyDeniedError
from tests.conftest import start_daemon

DENIALS = 200


def test_a_refused_call_leaves_no_garbage_holding_its_grpc_call(tmp_path: Path) -> None:
    """A denial's AbortError, kept by gRPC on the call, once carried the frames that hold the
    call: a cycle that kept each refused call (about 2.7 kB of RSS) until a full collection,
    rare in a big heap. The soak's RSS grew by it."""
    d = start_daemon(tmp_path, env=probed())
    try:
        probe(d)  # a full collection: what is garbage from here on is the denials'
        with d.client() as client:
            for _ in range(DENIALS):
                with pytest.raises(PolicyDeniedError):
                    client.run(["rm", "-rf", "/"], agent="dev", tool="shell")
        line = probe(d)
    finally:
        d.stop()
    assert line["calls_before_collect"] - line["calls"] == 0
