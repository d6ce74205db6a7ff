"""JWT claim checks: a token authenticates exactly when its claims are right; anything else
is a TokenError, never another exception."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from execgate.daemon.auth._jwt import JwtVerifier, TokenError
from execgate.daemon.config import AuthConfig

ISSUER = "https://issuer.test"
AUDIENCE = "execgate-test"
LEEWAY = 30
KID = "k1"
_KEY = ec.generate_private_key(ec.SECP256R1())
_OTHER = ec.generate_private_key(ec.SECP256R1())
_JWK = jwt.PyJWK.from_dict({**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(_KEY.public_key())),
                            "kid": KID, "alg": "ES256"})


class _Keys:
    """The identity provider's key set: one EC key."""

    async def key(self, kid: str) -> jwt.PyJWK | None:
        return _JWK if kid == KID else None


_VERIFIER = JwtVerifier(AuthConfig.model_validate({
    "jwks_url": "https://issuer.test/jwks", "issuer": ISSUER, "audience": AUDIENCE,
    "algorithms": ["ES256"], "leeway": f"{LEEWAY}s"}), _Keys())  # type: ignore[arg-type]


def _verify(token: str) -> dict[str, Any] | TokenError:
    try:
        return asyncio.run(_VERIFIER.verify(token))
    except TokenError as error:
        return error


_ISSUERS = st.sampled_from([ISSUER, ISSUER + "/", ISSUER.upper(), "https://issuer.tes",
                            "https://evil.test", "", ISSUER + "\0", " " + ISSUER])
_AUDIENCES = st.one_of(st.sampled_from([AUDIENCE, AUDIENCE + "-x", "EXECGATE-TEST", "", "*"]),
                       st.lists(st.sampled_from([AUDIENCE, "other"]), max_size=3))
_OFFSETS = st.integers(-3 * LEEWAY, 3 * LEEWAY) | st.sampled_from([-10**6, 10**6])
_MISSING = st.sampled_from(["", "iss", "aud", "exp"])


@given(_ISSUERS, _AUDIENCES, _OFFSETS, st.none() | _OFFSETS, _MISSING,
       st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
@example(ISSUER, AUDIENCE, 600, None, "", {})
@example(ISSUER, [AUDIENCE, "other"], -LEEWAY + 10, LEEWAY - 10, "", {})
def test_a_token_authenticates_exactly_when_its_claims_are_right(
        issuer: str, audience: str | list[str], exp: int, nbf: int | None, missing: str,
        extra: dict[str, Any]) -> None:
    now = int(time.time())
    claims: dict[str, Any] = {**extra, "iss": issuer, "aud": audience, "exp": now + exp,
                              "sub": "agent"}
    if nbf is not None:
        claims["nbf"] = now + nbf
    claims.pop(missing, None)
    token = jwt.encode(claims, _KEY, algorithm="ES256", headers={"kid": KID})
    outcome = _verify(token)
    # A margin of a few seconds either side of the leeway: the clock moves during the test.
    if abs(abs(exp) - LEEWAY) <= 2 or (nbf is not None and abs(abs(nbf) - LEEWAY) <= 2):
        return
    audiences = audience if isinstance(audience, list) else [audience]
    right = (missing == "" and issuer == ISSUER and AUDIENCE in audiences
             and exp > -LEEWAY and (nbf is None or nbf < LEEWAY))
    assert isinstance(outcome, dict) == right, (claims, outcome)


@given(st.sampled_from(["ES256", "HS256", "none", "RS256", "ES384", "es256", "", None]),
       st.none() | st.text(max_size=20) | st.integers(),
       st.booleans())
def test_a_foreign_header_or_key_is_a_token_error(alg: str | None, kid: object,
                                                  other_key: bool) -> None:
    header = jwt.utils.base64url_encode(json.dumps({"alg": alg, "kid": kid}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}).encode())
    signed = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600},
                        _OTHER if other_key else _KEY, algorithm="ES256",
                        headers={"kid": KID})
    signature = signed.rsplit(".", 1)[1]
    outcome = _verify(b".".join([header, payload]).decode() + "." + signature)
    if alg == "ES256" and kid == KID and not other_key:
        return  # the header is the one the token was signed with
    assert isinstance(outcome, TokenError)


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_string_as_a_token_is_a_token_error(token: str) -> None:
    assert isinstance(_verify(token), TokenError)


@given(st.lists(st.sampled_from(["eyJ", ".", "=", "e30", "bnVsbA", "W10", "IjEi", "AAAA",
                                 "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0"]), max_size=12)
       .map("".join))
def test_near_jwt_shapes_are_a_token_error(token: str) -> None:
    """Base64 of JSON null, lists, strings and empty objects where the header or claims go."""
    assert isinstance(_verify(token), TokenError)
