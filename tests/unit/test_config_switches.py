"""No configuration may look protected and not be: a protection that is written is on, or
the policy does not load."""

from __future__ import annotations

import pytest

from execgate.daemon.config import ConfigError, parse_policy

KEYS = "    api_keys: [{name: ci, key: k}]\n"
JWT = ("    jwks_url: https://idp.example/jwks\n    issuer: https://idp.example/\n"
       "    audience: execgate\n")


def auth(body: str) -> str:
    return "server:\n  auth:\n" + body


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml", {})
    return info.value.problems


def test_api_keys_without_enabled_turn_authentication_on() -> None:
    assert parse_policy(auth(KEYS), "t", {}).config.server.auth.enabled


def test_jwt_settings_without_enabled_turn_authentication_on() -> None:
    assert parse_policy(auth(JWT), "t", {}).config.server.auth.jwt


def test_require_auth_written_without_enabled_turns_authentication_on() -> None:
    assert parse_policy(auth("    require_auth: 'true'\n"), "t", {}).config.server.auth.enabled


def test_an_auth_block_without_credentials_leaves_authentication_off() -> None:
    assert not parse_policy(auth("    require_auth: false\n"), "t", {}).config.server.auth.enabled


def test_enabled_false_beside_api_keys_is_an_error_naming_both() -> None:
    found = problems(auth("    enabled: false\n" + KEYS))
    assert found == ["server.auth: enabled: false switches authentication off, so api_keys "
                     "would be ignored; remove enabled: false (authentication then follows "
                     "from the block) or remove api_keys"]


def test_enabled_false_beside_jwt_settings_is_an_error() -> None:
    found = problems(auth("    enabled: 'false'\n" + JWT))
    assert "so jwks_url, issuer, audience would be ignored" in found[0]


def test_enabled_false_beside_require_auth_true_is_an_error() -> None:
    found = problems(auth("    enabled: false\n    require_auth: true\n"))
    assert "so require_auth would be ignored" in found[0]


def test_enabled_false_alone_serves_without_authentication() -> None:
    assert not parse_policy(auth("    enabled: false\n"), "t", {}).config.server.auth.enabled


def test_rate_limiting_settings_without_enabled_turn_it_on() -> None:
    text = "server:\n  rate_limiting: {requests_per_minute: 5}\n"
    assert parse_policy(text, "t", {}).config.server.rate_limiting.enabled


def test_rate_limiting_enabled_false_beside_settings_is_an_error() -> None:
    found = problems("server:\n  rate_limiting: {enabled: false, burst: 5, per_user: true}\n")
    assert found[0].startswith("server.rate_limiting: enabled: false switches rate limiting "
                               "off, so burst, per_user would be ignored")


def test_an_empty_rate_limiting_block_leaves_it_off() -> None:
    assert not parse_policy("server:\n  rate_limiting: {}\n", "t",
                            {}).config.server.rate_limiting.enabled


def test_allowed_commands_with_deny_by_default_false_is_an_error() -> None:
    """The allowlist would allow nothing that is not allowed anyway."""
    found = problems("tools:\n  sh:\n    type: command\n    allowed_commands: [ls]\n"
                     "    deny_by_default: false\n")
    assert "allowed_commands has no effect with deny_by_default: false" in found[0]


@pytest.mark.parametrize("path", ["/", "//", "/execgate.v1.ExecService/x/"])
def test_an_excluded_path_wider_than_one_service_is_refused(path: str) -> None:
    found = problems(auth(KEYS + f"    excluded_paths: ['{path}']\n"))
    assert "would open more than one service" in found[0]


def test_an_excluded_whole_service_is_accepted() -> None:
    text = auth(KEYS + "    excluded_paths: [/grpc.health.v1.Health/, /health]\n")
    assert parse_policy(text, "t", {}).config.server.auth.excluded_paths[0].endswith("/")
