"""API-key authentication: only the credential decides who is calling; guessing is slowed."""

from __future__ import annotations

import pytest

from execgate.daemon.auth import Authenticator
from execgate.daemon.config import AuthConfig
from execgate.daemon.model import ANONYMOUS, Denial, DenialKind
from execgate.daemon.services._interceptor import peer_address

EXEC = "/execgate.v1.ExecService/Execute"
KEY = "k-0123456789abcdef"


def authenticator(**kwargs: object) -> Authenticator:
    config = {"enabled": True, "api_keys": [{"name": "ci", "key": KEY}, "plain-key"], **kwargs}
    return Authenticator(AuthConfig.model_validate(config))


async def refused(auth: Authenticator, metadata: list[tuple[str, str | bytes]],
                  method: str = EXEC) -> str:
    with pytest.raises(Denial) as info:
        await auth.authenticate(method, metadata)
    assert info.value.kind is DenialKind.UNAUTHENTICATED
    return info.value.message


async def test_a_named_key_authenticates_as_its_name() -> None:
    principal = await authenticator().authenticate(EXEC, [("authorization", f"Bearer {KEY}")])
    assert (principal.subject, principal.method) == ("ci", "api_key")


async def test_a_plain_key_is_named_by_position() -> None:
    principal = await authenticator().authenticate(EXEC, [("authorization", "Bearer plain-key")])
    assert principal.subject == "api_key[1]"


async def test_the_bearer_scheme_is_case_insensitive() -> None:
    principal = await authenticator().authenticate(EXEC, [("authorization", f"bearer {KEY}")])
    assert principal.subject == "ci"


@pytest.mark.parametrize("value", [f"Bearer {KEY} ", f"Bearer {KEY[:-1]}x", f"Bearer {KEY}\u00e9",
                                   f"Bearer  {KEY}", "Bearer ", f"Basic {KEY}", KEY])
async def test_near_misses_are_refused(value: str) -> None:
    await refused(authenticator(), [("authorization", value)])


async def test_a_megabyte_header_is_refused_before_any_work() -> None:
    assert await refused(authenticator(), [("authorization", "Bearer " + "a" * 1_000_000)]) == (
        "malformed authorization header")


async def test_two_authorization_headers_are_refused() -> None:
    await refused(authenticator(), [("authorization", f"Bearer {KEY}"),
                              ("authorization", "Bearer plain-key")])


async def test_missing_credentials_are_refused_when_required() -> None:
    assert "no credentials" in await refused(authenticator(), [])


async def test_other_metadata_cannot_claim_an_identity() -> None:
    metadata = [("x-subject", "ci"), ("x-user", "admin"), ("principal", "ci")]
    assert "no credentials" in await refused(authenticator(), metadata)


async def test_excluded_paths_need_no_credentials() -> None:
    auth = authenticator(excluded_paths=["/health"])
    assert await auth.authenticate("/grpc.health.v1.Health/Check", []) is ANONYMOUS
    await refused(auth, [])


async def test_optional_auth_admits_anonymous_callers_but_not_bad_credentials() -> None:
    auth = authenticator(require_auth=False)
    assert await auth.authenticate(EXEC, []) is ANONYMOUS
    await refused(auth, [("authorization", "Bearer wrong")])


async def test_disabled_auth_makes_everyone_anonymous() -> None:
    auth = Authenticator(AuthConfig())
    assert await auth.authenticate(EXEC, [("authorization", f"Bearer {KEY}")]) is ANONYMOUS


async def test_a_key_stored_as_a_digest_authenticates() -> None:
    digest = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"  # "s3cret"
    auth = Authenticator(AuthConfig.model_validate(
        {"enabled": True, "api_keys": [{"name": "hashed", "sha256": digest}]}))
    principal = await auth.authenticate(EXEC, [("authorization", "Bearer s3cret")])
    assert principal.subject == "hashed"


async def locked(auth: Authenticator, source: str) -> Authenticator:
    """``auth`` after ``source`` used up its failed attempts."""
    for _ in range(2):
        with pytest.raises(Denial):
            await auth.authenticate(EXEC, [("authorization", "Bearer wrong")], source=source)
    return auth


async def test_a_locked_address_has_even_a_right_key_refused_unchecked() -> None:
    auth = await locked(authenticator(max_failed_attempts=2), "192.0.2.1")
    with pytest.raises(Denial) as info:
        await auth.authenticate(EXEC, [("authorization", f"Bearer {KEY}")], source="192.0.2.1")
    assert info.value.kind is DenialKind.RESOURCE_EXHAUSTED


async def test_a_locked_address_still_calls_by_client_certificate() -> None:
    auth = await locked(authenticator(max_failed_attempts=2), "192.0.2.1")
    principal = await auth.authenticate(EXEC, [], certificate="spiffe://x/agent",
                                        source="192.0.2.1")
    assert principal.method == "mtls"


async def test_a_success_does_not_refund_failed_attempts() -> None:
    """Else a caller with one valid key could guess another between its own calls."""
    auth = authenticator(max_failed_attempts=2)
    for _ in range(2):
        await auth.authenticate(EXEC, [("authorization", f"Bearer {KEY}")], source="192.0.2.1")
        with pytest.raises(Denial):
            await auth.authenticate(EXEC, [("authorization", "Bearer x")], source="192.0.2.1")
    with pytest.raises(Denial) as info:
        await auth.authenticate(EXEC, [("authorization", f"Bearer {KEY}")], source="192.0.2.1")
    assert info.value.kind is DenialKind.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:192.0.2.7:50123", "192.0.2.7"),
    ("ipv6:[2001:db8:1:2:aaaa::1]:50123", "2001:db8:1:2::/64"),
    ("ipv6:[::ffff:192.0.2.7]:50123", "192.0.2.7"),
])
def test_failures_count_against_the_address_without_its_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address
