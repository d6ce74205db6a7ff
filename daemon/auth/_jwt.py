"""JWT bearer tokens checked against an identity provider's JWKS.

The key set is fetched off the request path and cached: refreshed every
``refresh_interval``; a token whose ``kid`` is unknown triggers at most one refetch per
``jwks_cooldown``, shared by every request waiting for it; a failed fetch keeps the last
good key set. The event loop never waits on the network: fetches run in a worker thread.
Before any cryptography, a token's size, header, algorithm and ``kid`` are checked, so a
flood of junk costs almost nothing. Only the asymmetric algorithms the policy lists are
accepted: never ``none``, never HMAC (which would turn the public key into a shared secret).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt
import structlog

from execgate.daemon.config import AuthConfig

MAX_KID = 256
MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT = 5.0
log = structlog.get_logger()

Fetch = Callable[[str], dict[str, Any]]


class TokenError(Exception):
    """A token that does not authenticate; the message is safe to return and audit, and
    ``reason`` a code in the shape of PyJWT's error classes (``expired``, ``bad_audience``,
    ``bad_issuer``, ``missing_claim``, ``unknown_key`` ...) for the audit and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fetch_jwks(url: str) -> dict[str, Any]:
    """GET a JWKS document (blocking; run it in a thread)."""
    check_jwks_url(url)  # https (or http to localhost) only: never file: or another scheme
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:  # noqa: S310
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no keys list)")
    return document


def check_jwks_url(url: str) -> None:
    """https, or plain http to this machine only (for tests and local identity providers)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http"
                                   and parts.hostname in ("127.0.0.1", "::1", "localhost")):
        return
    raise ValueError(f"jwks_url {url!r} must be https (plain http only to localhost)")


class JwksCache:
    """The identity provider's signing keys, by ``kid``."""

    def __init__(self, url: str, refresh_interval: float, cooldown: float,
                 fetch: Fetch = fetch_jwks, clock: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self._refresh_interval = refresh_interval
        self._cooldown = cooldown
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Future[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Fetch now and every refresh_interval, in the background."""
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    def stop(self) -> None:
        """Stop refreshing."""
        if self._refresher is not None:
            self._refresher.cancel()

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_interval)

    async def refresh(self) -> None:
        """Fetch the key set; concurrent callers share one fetch; failures keep the old set."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_once())
        await asyncio.shield(self._inflight)

    async def _fetch_once(self) -> None:
        self._last_attempt = self._clock()
        try:
            document = await asyncio.to_thread(self._fetch, self._url)
            keys = {}
            for entry in document["keys"]:
                try:
                    key = jwt.PyJWK.from_dict(entry)
                except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
                    log.warning("jwks.key_skipped", kid=entry.get("kid"), reason=str(exc))
                    continue
                if key.key_id:
                    keys[key.key_id] = key
            self._keys = keys
            log.info("jwks.refreshed", keys=len(keys))
        except Exception as exc:
            log.warning("jwks.refresh_failed", url=self._url, reason=str(exc),
                        keeping=len(self._keys))
        finally:
            self._inflight = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key ``kid``; an unknown one refetches, at most once per cooldown."""
        if kid not in self._keys and (
                self._inflight is not None
                or self._clock() - self._last_attempt >= self._cooldown):
            await self.refresh()
        return self._keys.get(kid)


class JwtVerifier:
    """Checks a bearer token: signature by a JWKS key, iss, aud, exp, nbf."""

    def __init__(self, auth: AuthConfig, keys: JwksCache) -> None:
        if not (auth.issuer and auth.audience):
            raise ValueError("JWT needs issuer and audience")
        self._issuer = auth.issuer
        self._audience = auth.audience
        self._algorithms = list(auth.algorithms)
        self._leeway = auth.leeway
        self._keys = keys

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises TokenError."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("malformed", "malformed token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self._algorithms:
            raise TokenError("bad_algorithm",
                             f"token algorithm {str(algorithm)[:32]!r} is not accepted")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID or not kid.isprintable():
            raise TokenError("no_kid", "token has no usable kid")
        key = await self._keys.key(kid)
        if key is None:
            raise TokenError("unknown_key", "token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=self._algorithms, audience=self._audience,
                issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("expired", "token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("immature", "token not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise TokenError("bad_audience", "token audience is not this daemon") from None
        except jwt.InvalidIssuerError:
            raise TokenError("bad_issuer", "token issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("missing_claim", f"token has no {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            raise TokenError("bad_signature", "token signature or claims are invalid") from None
        if claims.get("iss") != self._issuer:  # exact, whatever PyJWT accepts as a container
            raise TokenError("bad_issuer", "token issuer is not trusted")
        return claims
