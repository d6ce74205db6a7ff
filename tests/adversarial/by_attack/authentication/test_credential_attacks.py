"""Authentication attacks: forged or smuggled credentials. Each ends UNAUTHENTICATED with
the rule server.auth, and the forged identity ran nothing (checked by a marker file a
successful call would create)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from execgate.client import AuthenticationError
from execgate.v1 import agents_pb2, agents_pb2_grpc
from tests.adversarial.test_jwt import AUDIENCE, ISSUER, POLICY, Jwks, Signer
from tests.conftest import API_KEY, Daemon, start_daemon


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[Jwks, Signer]]:
    jwks = Jwks()
    signer = Signer("ec-1", "ec")
    jwks.keys = [signer.jwk]
    yield jwks, signer
    jwks.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory,
           idp: tuple[Jwks, Signer]) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("authentication"), POLICY,
                     env={"JWKS_URL": idp[0].url})
    yield d
    d.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims() -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300}


def _status(daemon: Daemon, *metadata: tuple[str, str]) -> tuple[grpc.StatusCode, str]:
    """ListAgents with ``metadata``: its status and details."""
    with grpc.insecure_channel(daemon.target) as channel:
        try:
            agents_pb2_grpc.AgentServiceStub(channel).ListAgents(
                agents_pb2.ListAgentsRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def _refused(daemon: Daemon, *metadata: tuple[str, str]) -> None:
    code, details = _status(daemon, *metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "(rule: server.auth)" in details


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def test_a_token_trusting_its_own_embedded_jwk_is_refused(daemon: Daemon) -> None:
    """CVE-2018-0114 (node-jose) and PortSwigger's "jwk header injection": the token carries
    the attacker's public key and is signed with its private key."""
    attacker = Signer("ec-1", "ec")
    token = jwt.encode(_claims(), attacker.private, algorithm="ES256",
                       headers={"kid": "ec-1", "jwk": attacker.jwk})
    _refused(daemon, _bearer(token))


def test_a_jku_header_pointing_at_the_attackers_key_set_is_not_fetched(
        daemon: Daemon) -> None:
    """PortSwigger's "jku header injection": the daemon never fetches keys a token names."""
    attacker_jwks, attacker = Jwks(), Signer("ec-1", "ec")
    attacker_jwks.keys = [attacker.jwk]
    try:
        token = jwt.encode(_claims(), attacker.private, algorithm="ES256",
                           headers={"kid": "ec-1", "jku": attacker_jwks.url,
                                    "x5u": attacker_jwks.url})
        _refused(daemon, _bearer(token))
        assert attacker_jwks.fetches == 0
    finally:
        attacker_jwks.close()


def test_a_kid_path_traversal_to_dev_null_is_refused(daemon: Daemon) -> None:
    """PortSwigger's "kid path traversal": HS256 signed with an empty key, kid naming
    /dev/null, for servers that read the key from a file named by kid."""
    header = _b64(json.dumps({"alg": "HS256", "kid": "../../../../../../dev/null"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signature = _b64(hmac.new(b"", f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _refused(daemon, _bearer(f"{header}.{payload}.{signature}"))


def test_a_psychic_ecdsa_signature_is_refused(daemon: Daemon) -> None:
    """CVE-2022-21449 ("psychic signatures", Java's ECDSA): r = s = 0 verified anything."""
    header = _b64(json.dumps({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    _refused(daemon, _bearer(f"{header}.{payload}.{_b64(bytes(64))}"))


def test_hs256_with_the_public_key_in_openssh_form_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer]) -> None:
    """PyJWT CVE-2022-29217: algorithm confusion with a public key in OpenSSH form used as
    an HMAC secret (the PEM and JWK forms are in tests/adversarial/test_jwt.py)."""
    secret = idp[1].public.public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    header = _b64(json.dumps({"alg": "HS256", "kid": "ec-1"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signature = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _refused(daemon, _bearer(f"{header}.{payload}.{signature}"))


def test_a_valid_token_with_its_signature_stripped_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer]) -> None:
    """Signature stripping (the "none"-less variant of CVE-2015-9235): header and claims of
    a real token, no signature."""
    header, payload, _ = idp[1].token().split(".")
    _refused(daemon, _bearer(f"{header}.{payload}."))


def test_a_real_tokens_claims_swapped_under_its_signature_are_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer]) -> None:
    """Claim tampering: a genuine signature kept, the subject changed to an admin."""
    header, _, signature = idp[1].token().split(".")
    forged = _b64(json.dumps({**_claims(), "sub": "admin", "roles": "admin"}).encode())
    _refused(daemon, _bearer(f"{header}.{forged}.{signature}"))


def test_an_api_key_in_another_case_is_refused(daemon: Daemon) -> None:
    """Case-insensitive key comparison would divide the key space by far."""
    _refused(daemon, _bearer(API_KEY.upper()))


def test_a_prefix_of_the_api_key_is_refused(daemon: Daemon) -> None:
    """Prefix comparison bugs (strncmp on the shorter length)."""
    _refused(daemon, _bearer(API_KEY[:-1]))


def test_the_api_key_with_a_suffix_is_refused(daemon: Daemon) -> None:
    """The same bug the other way round."""
    _refused(daemon, _bearer(API_KEY + "x"))


def test_a_second_authorization_header_is_refused(daemon: Daemon) -> None:
    """Header smuggling: a wrong credential beside a right one, in either order, must not
    let a proxy and the daemon disagree about who is calling."""
    _refused(daemon, _bearer("wrong"), _bearer(API_KEY))
    _refused(daemon, _bearer(API_KEY), _bearer("wrong"))


def test_a_key_in_another_header_is_no_credential(daemon: Daemon) -> None:
    """x-api-key, a header other gateways accept: not here."""
    _refused(daemon, ("x-api-key", API_KEY))


def test_a_key_without_the_bearer_scheme_is_refused(daemon: Daemon) -> None:
    """Basic or no scheme: only `Bearer <token>` is a credential."""
    _refused(daemon, ("authorization", API_KEY))
    _refused(daemon, ("authorization", f"Basic {API_KEY}"))


def test_a_forged_identity_runs_nothing(daemon: Daemon) -> None:
    """A call with a token signed by a key of the attacker's, under a known kid, is refused
    before any step after identity: the audit shows the refusal and no run."""
    attacker = Signer("ec-1", "ec")
    token = jwt.encode(_claims(), attacker.private, algorithm="ES256", headers={"kid": "ec-1"})
    with daemon.client(token=token) as c, pytest.raises(AuthenticationError):
        c.run(["echo", "ran"], agent="dev", tool="shell")
    assert daemon.audit("auth.failed")
    assert not [line for line in daemon.stderr_lines if "mallory" in line]
