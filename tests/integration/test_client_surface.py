"""The Python client as the README shows it: the local token found as the CLI finds it, one
per daemon, and an AsyncClient that can do what Client can."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from execgate.client import AsyncClient, Client
from tests.conftest import Daemon, start_daemon


def surface(cls: type) -> dict[str, list[tuple[str, object, object]]]:
    """Public methods with their parameters' names, kinds and defaults (not annotations:
    the async client's differ by being async)."""
    return {name: [(p.name, p.kind, p.default)
                   for p in inspect.signature(member).parameters.values()]
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_async_client_has_the_same_methods_and_parameters_as_client() -> None:
    assert surface(AsyncClient) == surface(Client)


@dataclass
class Defaults:
    """Two daemons on the embedded default (no --config), sharing one user's state."""

    daemons: list[Daemon]
    state: Path


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Defaults]:
    state = tmp_path_factory.mktemp("state")
    daemons = [start_daemon(tmp_path_factory.mktemp(f"default{i}"), policy=None,
                            env={"XDG_STATE_HOME": str(state)}) for i in range(2)]
    yield Defaults(daemons, state)
    for d in daemons:
        d.stop()


@pytest.mark.parametrize("which", [0, 1])
def test_each_of_two_default_daemons_is_reachable_by_execgate_without_a_token(
        defaults: Defaults, which: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGATE_")}
    env.update(EXECGATE_TARGET=defaults.daemons[which].target,
               XDG_STATE_HOME=str(defaults.state))
    result = subprocess.run([sys.executable, "-m", "execgate.client._cli", "run", "--",
                             "echo", "hi"], env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


@pytest.mark.parametrize("which", [0, 1])
def test_client_finds_the_local_token_as_the_cli_does(
        defaults: Defaults, which: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECGATE_TOKEN", raising=False)
    monkeypatch.delenv("EXECGATE_TOKEN_FILE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(defaults.state))
    with Client(defaults.daemons[which].target) as c:
        assert c.run(["echo", "hi"]).stdout == b"hi\n"


async def test_async_client_finds_the_local_token_too(
        defaults: Defaults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECGATE_TOKEN", raising=False)
    monkeypatch.delenv("EXECGATE_TOKEN_FILE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(defaults.state))
    async with AsyncClient(defaults.daemons[0].target) as c:
        assert (await c.run(["echo", "hi"])).stdout == b"hi\n"


def test_the_readmes_python_example_runs_as_written(
        defaults: Defaults, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Only the address moves (the test daemon is not on 7878), as ``execgate`` would."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    daemon = defaults.daemons[0]
    (daemon.workspace / "notes.txt").write_text("hello\n")
    monkeypatch.delenv("EXECGATE_TOKEN", raising=False)
    monkeypatch.delenv("EXECGATE_TOKEN_FILE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(defaults.state))
    monkeypatch.setenv("EXECGATE_TARGET", daemon.target)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "notes.txt" in printed
    assert printed.rstrip().endswith("tools.execute_command.deny_by_default")
