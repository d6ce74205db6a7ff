"""Policy files: the guide's shape, strict keys, environment expansion, clear problems."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from execgate.daemon.config import (
    ConfigError,
    load_policy,
    parse_duration,
    parse_policy,
    unenforced,
)

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "policies" / "production.yaml"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml", env or {})
    return info.value.problems


def test_production_example_loads_with_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # inside llms: may stay undefined
    loaded = load_policy(PRODUCTION)
    assert set(loaded.config.agents) == {"public_assistant", "internal_assistant",
                                         "admin_assistant"}
    text = "\n".join(loaded.warnings)
    assert "agents.public_assistant.tools[0]: tool 'search' is not provided" in text
    for key in ("llms:", "server.cors", "agents.internal_assistant.document_stores",
                "agents.admin_assistant.llm"):
        assert key in text


def test_production_example_reports_nothing_as_unprovided() -> None:
    """Metrics and spans are provided (the otel extra is in dev)."""
    assert unenforced(load_policy(PRODUCTION).config) == []


def test_tracing_without_the_otel_extra_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert unenforced(load_policy(PRODUCTION).config) == [
        "server.observability.tracing: the otel extra is not installed "
        "(pip install 'execgate[otel]'); no spans are exported"]


def test_unknown_key_is_an_error_naming_its_path() -> None:
    found = problems("tools:\n  sh:\n    type: command\n    allowed_comands: [ls]\n")
    assert found == ["tools.sh.allowed_comands: unknown key; did you mean `allowed_commands`?"]


def test_every_problem_is_reported_at_once() -> None:
    found = problems("tools:\n  a:\n    type: shell\n  b:\n    type: command\n"
                     "    max_execution_time: soon\nbogus: 1\n")
    assert len(found) == 3
    assert any(p.startswith("tools.a.type") for p in found)
    assert any(p.startswith("tools.b.max_execution_time") for p in found)
    assert any(p.startswith("bogus: unknown key") for p in found)


def test_a_duplicate_key_is_an_error() -> None:
    found = problems("tools:\n  sh:\n    type: command\n  sh:\n    type: function\n")
    assert "duplicate key 'sh'" in found[0]


def test_unquoted_yes_in_a_command_list_gets_a_hint() -> None:
    found = problems("tools:\n  sh:\n    type: command\n    allowed_commands: [yes]\n")
    assert "quote it" in found[0]


def test_variables_expand_with_defaults() -> None:
    text = ("tools:\n  sh:\n    type: command\n    working_directory: ${JAIL}\n"
            "    max_execution_time: ${LIMIT:-45s}\n")
    tool = parse_policy(text, "t", {"JAIL": "/srv/jail"}).config.tools["sh"]
    assert (tool.working_directory, tool.max_execution_time) == ("/srv/jail", 45.0)


def test_an_undefined_variable_is_an_error_naming_its_path() -> None:
    found = problems("server:\n  auth:\n    api_keys: ['${MISSING_KEY}']\n")
    assert found == ["server.auth.api_keys[0]: environment variable MISSING_KEY is not set "
                     "(set it, or write ${MISSING_KEY:-default})"]


def test_a_double_dollar_is_a_literal_dollar() -> None:
    text = "tools:\n  sh:\n    type: command\n    env: {PRICE: '$${NOT_A_VAR}'}\n"
    assert parse_policy(text, "t", {}).config.tools["sh"].env == {"PRICE": "${NOT_A_VAR}"}


def test_dotenv_beside_the_config_is_loaded_without_overriding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("JAIL=/from/dotenv\nLIMIT=5s\n")
    (tmp_path / "p.yaml").write_text("tools:\n  sh:\n    type: command\n"
                                     "    working_directory: ${JAIL}\n"
                                     "    max_execution_time: ${LIMIT}\n")
    monkeypatch.setenv("LIMIT", "7s")
    tool = load_policy(tmp_path / "p.yaml", cwd=tmp_path / "elsewhere").config.tools["sh"]
    assert (tool.working_directory, tool.max_execution_time) == ("/from/dotenv", 7.0)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1m30s", 90),
                                               ("500ms", 0.5), ("1h", 3600), (15, 15)])
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30 sec", "-1s", "0s", "s", "", "1d", True])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_an_incomplete_jwt_block_is_refused() -> None:
    found = problems("server:\n  auth:\n    enabled: true\n    jwks_url: https://x/jwks\n")
    assert "missing: audience, issuer" in found[0]


def test_an_unknown_function_handler_is_refused() -> None:
    found = problems("tools:\n  web:\n    type: function\n    handler: web_request\n")
    assert "not a built-in function tool" in found[0]


def test_a_path_in_allowed_commands_is_refused() -> None:
    found = problems("tools:\n  sh:\n    type: command\n    allowed_commands: [/bin/ls]\n")
    assert "not a bare command name" in found[0]


def _execgated(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "execgate.daemon.cli", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_config_accepts_the_production_example(tmp_path: Path) -> None:
    """From a directory where it is served (its jail ./workspace exists), with every key it
    sets enforced or provided: nothing is listed as not enforced (the otel extra is in dev;
    its LLM platform's keys are ignored by design, and warned of)."""
    (tmp_path / "workspace").mkdir()
    result = _execgated("check-config", str(PRODUCTION), cwd=tmp_path)
    assert result.returncode == 0
    assert "not enforced" not in result.stdout


def test_check_config_exits_2_listing_every_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("tools:\n  a:\n    type: shell\nbogus: 1\n")
    result = _execgated("check-config", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2
    assert "2 problem(s)" in result.stderr
    assert "bogus: unknown key" in result.stderr


def test_serve_refuses_plaintext_on_a_non_loopback_address(tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "p.yaml").write_text("tools: {}\n")
    result = _execgated("serve", "--config", str(tmp_path / "p.yaml"), "--listen",
                        "0.0.0.0:7878", cwd=tmp_path)
    assert result.returncode == 2
    assert "only served on loopback" in result.stderr


def test_serve_refuses_a_missing_working_directory(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("tools:\n  sh:\n    type: command\n"
                                     "    working_directory: ./nowhere\n")
    result = _execgated("serve", "--config", str(tmp_path / "p.yaml"), "--listen",
                        "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 2
    assert "tools.sh.working_directory" in result.stderr


@pytest.mark.parametrize(("jwks_url", "issuer", "audience"), [
    ("https://${AUTH0_DOMAIN}/.well-known/jwks.json", "https://${AUTH0_DOMAIN}/",
     "${AUTH0_AUDIENCE}"),
    ("https://keycloak.yourdomain.com/realms/your-realm/protocol/openid-connect/certs",
     "https://keycloak.yourdomain.com/realms/your-realm", "hector-api"),
    ("https://cognito-idp.${REGION}.amazonaws.com/${POOL}/.well-known/jwks.json",
     "https://cognito-idp.${REGION}.amazonaws.com/${POOL}", "${CLIENT_ID}"),
])
def test_the_guides_identity_provider_configs_load(jwks_url: str, issuer: str,
                                                   audience: str) -> None:
    text = (f"server:\n  auth:\n    enabled: true\n    jwks_url: {jwks_url}\n"
            f"    issuer: {issuer}\n    audience: {audience}\n")
    env = {"AUTH0_DOMAIN": "tenant.auth0.com", "AUTH0_AUDIENCE": "execgate",
           "REGION": "eu-west-1", "POOL": "eu-west-1_abc", "CLIENT_ID": "client"}
    auth = parse_policy(text, "guide.yaml", env).config.server.auth
    assert auth.jwt
    assert auth.issuer is not None
    assert "${" not in auth.issuer


def test_the_guides_unquoted_placeholder_gets_a_hint() -> None:
    found = problems("server:\n  auth:\n    enabled: true\n    jwks_url: https://x/jwks\n"
                     "    issuer: https://x/\n    audience: {clientId}\n")
    assert found == ["server.auth.audience: Input should be a valid string (YAML reads {name} "
                     "as a mapping: quote the value, or write ${NAME} to take it from the "
                     "environment)"]


def test_hmac_algorithms_cannot_be_configured() -> None:
    found = problems("server:\n  auth:\n    algorithms: [RS256, HS256]\n")
    assert "HS256 not accepted" in found[0]


def test_an_api_key_may_be_stored_as_its_digest() -> None:
    digest = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
    text = f"server:\n  auth:\n    api_keys: [{{name: ci, sha256: {digest}}}]\n"
    assert parse_policy(text, "t", {}).config.server.auth.named_api_keys()[0].sha256 == digest


def test_execgated_hash_key_prints_the_digest() -> None:
    result = subprocess.run([sys.executable, "-m", "execgate.daemon.cli", "hash-key"],
                            input="s3cret\n", capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == (
        "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0")


def test_an_unknown_prompt_placeholder_is_a_load_time_error() -> None:
    found = problems("tools:\n  w:\n    type: function\n    handler: write_file\n"
                     "    require_approval: true\n    approval_prompt: 'Write {fiel}?'\n")
    assert found[0].startswith("tools.w.approval_prompt: unknown placeholder(s) {fiel}")
    assert "{file}" in found[0]


def test_require_approval_for_is_for_command_tools() -> None:
    found = problems("tools:\n  w:\n    type: function\n    handler: read_file\n"
                     "    require_approval_for: [cat]\n")
    assert "command tools only" in found[0]

