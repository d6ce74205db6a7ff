"""Which sandbox layers a job gets on a host: a required layer the host lacks refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from execgate.daemon.config import parse_policy
from execgate.daemon.model import Confinement, Denial, DenialKind
from execgate.daemon.policy import Policy
from execgate.daemon.sandbox import HostSupport, layers_for

EVERYTHING = HostSupport(root=True, landlock_abi=7, landlock=None, namespaces=None, cgroup=None,
                         user_namespace=None, view=None)


def confinement(tmp_path: Path, sandbox: str) -> Confinement:
    text = f"""\
tools:
  t: {{type: command, working_directory: {tmp_path}, allowed_commands: [ls],
      sandbox: {sandbox}}}
agents: {{a: {{tools: [t]}}}}
"""
    return Policy(parse_policy(text, "test", {}).config, tmp_path).confinements["t"]


def test_a_host_with_every_layer_gives_the_view(tmp_path: Path) -> None:
    assert layers_for("t", confinement(tmp_path, "{}"), EVERYTHING).view


def test_a_required_view_the_host_lacks_refuses_naming_the_layer(tmp_path: Path) -> None:
    host = HostSupport(**{**EVERYTHING.__dict__, "view": "pivot_root failed"})
    with pytest.raises(Denial) as caught:
        layers_for("t", confinement(tmp_path, "{}"), host)
    assert caught.value.kind is DenialKind.SANDBOX_UNAVAILABLE
    assert caught.value.rule == "tools.t.sandbox.view"
    assert "pivot_root failed" in caught.value.message


def test_a_required_view_without_namespaces_refuses(tmp_path: Path) -> None:
    """The view is built in the job's mount namespace: turning namespaces off cannot
    silently drop it."""
    with pytest.raises(Denial) as caught:
        layers_for("t", confinement(tmp_path, "{namespaces: off}"), EVERYTHING)
    assert caught.value.rule == "tools.t.sandbox.view"


def test_an_optional_view_the_host_lacks_is_skipped(tmp_path: Path) -> None:
    host = HostSupport(**{**EVERYTHING.__dict__, "view": "pivot_root failed"})
    assert not layers_for("t", confinement(tmp_path, "{view: optional}"), host).view


def test_unix_sockets_must_be_absolute_paths(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not an absolute path"):
        confinement(tmp_path, "{unix_sockets: [run/x.sock]}")
