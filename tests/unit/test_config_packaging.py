"""The distribution's metadata: its licence, the Python versions CI tests, what it installs."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imports(package: Path) -> set[str]:
    names: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_the_declared_licence_is_shipped_in_full() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_classifiers_name_the_python_version_ci_tests() -> None:
    """CI runs Debian 12's Python 3.11; the licence is the SPDX expression (PEP 639 forbids a
    licence classifier beside it)."""
    assert "Programming Language :: Python :: 3.11" in PROJECT["classifiers"]
    assert PROJECT["requires-python"] == ">=3.11"


def test_psutil_is_a_development_dependency_only() -> None:
    assert not any(d.startswith("psutil") for d in PROJECT["dependencies"])
    assert any(d.startswith("psutil") for d in PROJECT["optional-dependencies"]["dev"])
    assert "psutil" not in _imports(ROOT / "daemon") | _imports(ROOT / "client")
