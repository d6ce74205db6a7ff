"""`execgated install-systemd`: the shipped files land beneath a prefix, usable by systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from execgate.daemon.config import load_policy
from execgate.daemon.install import default_execgated

ANALYZE = shutil.which("systemd-analyze")
SERVICE = "etc/systemd/system/execgated.service"


def install(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "install-systemd",
                           "--prefix", str(prefix), *args],
                          capture_output=True, text=True, timeout=60)


def test_install_writes_the_units_sysusers_and_tmpfiles_files(tmp_path: Path) -> None:
    result = install(tmp_path)
    assert result.returncode == 0, result.stderr
    for place in (SERVICE, "etc/systemd/system/execgate.socket",
                  "usr/lib/sysusers.d/execgate.conf", "usr/lib/tmpfiles.d/execgate.conf"):
        assert (tmp_path / place).is_file(), place
        assert (tmp_path / place).stat().st_mode & 0o777 == 0o644


def test_the_unit_runs_the_execgated_it_was_installed_with(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    assert f"\nExecStart={default_execgated()} serve " in (tmp_path / SERVICE).read_text()


def test_execgated_option_chooses_what_the_unit_runs(tmp_path: Path) -> None:
    other = tmp_path / "bin" / "execgated"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert install(tmp_path / "root", "--execgated", str(other)).returncode == 0
    assert f"\nExecStart={other} serve " in (tmp_path / "root" / SERVICE).read_text()


def test_an_execgated_path_systemd_would_misread_is_refused(tmp_path: Path) -> None:
    result = install(tmp_path, "--execgated", "/opt/exec gate/bin/execgated")
    assert result.returncode == 2
    assert "absolute path without spaces" in result.stderr
    assert not (tmp_path / SERVICE).exists()


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_installed_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    units = tmp_path / "etc/systemd/system"
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "verify", str(units / "execgated.service"),
                             str(units / "execgate.socket")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installing_again_leaves_the_files_unchanged(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    again = install(tmp_path)
    assert again.returncode == 0
    assert "wrote" not in again.stdout
    assert f"unchanged  {tmp_path / SERVICE}" in again.stdout


def test_a_changed_file_is_not_overwritten_without_force(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    tmpfiles = tmp_path / "usr/lib/tmpfiles.d/execgate.conf"
    tmpfiles.write_text("# edited by hand\n")
    (tmp_path / SERVICE).unlink()
    result = install(tmp_path)
    assert result.returncode == 2
    assert str(tmpfiles) in result.stderr and "--force" in result.stderr
    assert tmpfiles.read_text() == "# edited by hand\n"
    assert not (tmp_path / SERVICE).exists(), "a refusal writes nothing"


def test_force_replaces_a_changed_file(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    tmpfiles = tmp_path / "usr/lib/tmpfiles.d/execgate.conf"
    tmpfiles.write_text("# edited by hand\n")
    assert install(tmp_path, "--force").returncode == 0
    assert tmpfiles.read_text().startswith("# execgated's directories")


def test_example_policies_are_installed_and_load(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert install(tmp_path).returncode == 0
    examples = tmp_path / "usr/share/execgate/policies"
    assert sorted(p.name for p in examples.iterdir()) == [
        "container.yaml", "host.yaml", "production.yaml"]
    monkeypatch.setenv("EXECGATE_CI_KEY", "a-key-for-the-example-0123456789")
    assert load_policy(examples / "host.yaml").config.server.listen == ["0.0.0.0:7443"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating users and chowning needs root")
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None
                    or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers or systemd-tmpfiles is not installed")
def test_sysusers_and_tmpfiles_set_up_a_root_as_the_deploy_guide_says(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], check=True, timeout=60)
    passwd = (tmp_path / "etc/passwd").read_text()
    entry = next(line.split(":") for line in passwd.splitlines()
                 if line.startswith("execgate:"))
    assert entry[5] == "/var/lib/execgate"
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}"], check=True,
                   timeout=60)
    workspace = (tmp_path / "var/lib/execgate/workspace").stat()
    assert (workspace.st_uid, workspace.st_mode & 0o777) == (int(entry[2]), 0o750)
    config = (tmp_path / "etc/execgate").stat()
    assert (config.st_uid, config.st_gid) == (0, int(entry[3]))
