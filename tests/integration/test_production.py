"""The guide's production example, served as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from execgate.client import AuthenticationError
from tests.conftest import start_daemon

PRODUCTION = Path(__file__).resolve().parents[2] / "policies" / "production.yaml"


def test_serve_runs_the_production_example(tmp_path: Path) -> None:
    """The guide's example serves as it is: JWT (its JWKS unreachable here: every token is
    refused, and the daemon keeps serving), approval, rate limiting."""
    d = start_daemon(tmp_path, PRODUCTION.read_text())
    try:
        # excluded_paths (the guide's agent card) open discovery to anonymous callers
        with d.client(token="") as c:
            assert [a.name for a in c.agents()] == ["public_assistant"]
        with d.client(token="not-a-jwt") as c, pytest.raises(AuthenticationError):
            c.run(["git", "status"], agent="admin_assistant")
    finally:
        d.stop()
