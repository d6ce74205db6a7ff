"""Identity: the credential on a call, and nothing else, becomes its Principal.

A bearer value is tried as an API key (constant time), then, when JWT is configured and it
has a JWT's shape, as a JWT. A credential that is present but wrong is refused even where
none is required: a bad credential never quietly becomes an anonymous call. No request
field or other metadata can set or change the identity.

Bearer credentials can be guessed, so their failures are counted per peer address (see
``FailedAttempts``): an address out of attempts has its bearer credentials refused unchecked.
A client certificate or a unix peer's uid cannot be guessed and is never locked out, nor is
a call without credentials (a health probe).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

from execgate.daemon.auth._jwt import JwtVerifier, TokenError
from execgate.daemon.auth._keys import ApiKeys
from execgate.daemon.config import AuthConfig
from execgate.daemon.limits import FailedAttempts
from execgate.daemon.model import ANONYMOUS, Denial, DenialKind, Principal

MAX_CREDENTIAL_BYTES = 8192
"""Longer authorization values are refused before any work is done on them."""

# The guide's HTTP paths, as the gRPC services that stand for them here.
PATH_ALIASES = {
    "/health": "/grpc.health.v1.Health/",
    "/.well-known/agent-card.json": "/execgate.v1.AgentService/ListAgents",
}

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "current_principal", default=ANONYMOUS)
"""The principal of the call being served; set by the interceptor in the call's own task."""

Metadata = Sequence[tuple[str, str | bytes]]


class AuthenticationFailed(Denial):
    """A credential refused; ``reason`` is a code for the audit and metrics, in the shape of
    PyJWT's error classes: ``no_credentials``, ``malformed``, ``bad_scheme``,
    ``invalid_credentials`` (no such key), ``expired``, ``immature``, ``bad_audience``,
    ``bad_issuer``, ``missing_claim``, ``bad_signature``, ``bad_algorithm``, ``no_kid``,
    ``unknown_key``, ``relay_only``. The caller sees only the denial's message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(DenialKind.UNAUTHENTICATED, message, "server.auth")
        self.reason = reason


def failure_reason(denial: Denial) -> str:
    """The audit's reason code for any refusal of the identity step."""
    if isinstance(denial, AuthenticationFailed):
        return denial.reason
    if denial.rule == "server.auth.max_failed_attempts":
        return "too_many_failures"
    return denial.kind.value


def _unauthenticated(reason: str, message: str) -> Denial:
    return AuthenticationFailed(reason, message)


class Authenticator:
    """Turns a call's metadata into a Principal, or refuses it."""

    def __init__(self, auth: AuthConfig, jwt_verifier: JwtVerifier | None = None,
                 failed_attempts: FailedAttempts | None = None) -> None:
        self._enabled = auth.enabled
        self._require = auth.require_auth
        self._excluded = tuple(PATH_ALIASES.get(p, p) for p in auth.excluded_paths)
        self._keys = ApiKeys(auth)
        self._jwt = jwt_verifier
        self._failed = failed_attempts or FailedAttempts(auth.max_failed_attempts,
                                                         auth.failed_attempts_window)

    def _is_excluded(self, method: str) -> bool:
        return any(method == p or (p.endswith("/") and method.startswith(p))
                   for p in self._excluded)

    async def authenticate(self, method: str, metadata: Metadata,
                           certificate: str | None = None, uid: int | None = None,
                           source: str = "") -> Principal:
        """The Principal for a call to ``method``; raises Denial(UNAUTHENTICATED), or
        Denial(RESOURCE_EXHAUSTED) when ``source`` has failed too often.

        ``certificate`` is the identity of a client certificate the TLS layer verified, and
        ``uid`` that of an allowed unix socket peer; a bearer credential, when one is sent,
        decides instead. ``source`` names the peer address failures are counted against.
        """
        verified = None
        if uid is not None:
            verified = Principal(subject=f"uid:{uid}", method="unix", local=True)
        elif certificate is not None:
            verified = Principal(subject=certificate, method="mtls")
        if not self._enabled:
            return verified or ANONYMOUS
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            if verified is not None:
                return verified
            if self._is_excluded(method) or not self._require:
                return ANONYMOUS
            raise _unauthenticated("no_credentials",
                                   "no credentials: send 'authorization: Bearer <token>'")
        self._failed.check(source)
        try:
            return await self._bearer(values, local=uid is not None)
        except Denial:
            self._failed.record(source)
            raise

    async def _bearer(self, values: list[str | bytes], local: bool) -> Principal:
        """The Principal of the one bearer credential in ``values``; ``local`` (it came over
        the unix socket) keeps the local reach."""
        if len(values) > 1:
            raise _unauthenticated("malformed", "more than one authorization header")
        value = values[0]
        if isinstance(value, bytes) or len(value) > MAX_CREDENTIAL_BYTES:
            raise _unauthenticated("malformed", "malformed authorization header")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated("bad_scheme", "authorization must be 'Bearer <token>'")
        if not token.isascii() or not token.isprintable():
            raise _unauthenticated("invalid_credentials", "invalid credentials")
        name = self._keys.match(token)
        if name is not None:
            return Principal(subject=name, method="api_key", local=local)
        if self._jwt is not None and token.count(".") == 2:
            try:
                claims = await self._jwt.verify(token)
            except TokenError as exc:
                raise _unauthenticated(exc.reason, f"invalid token: {exc}") from None
            subject = claims.get("sub")
            if not isinstance(subject, str) or not subject:
                raise _unauthenticated("missing_claim", "invalid token: no sub claim")
            return Principal(subject=subject, method="jwt", claims=claims, local=local)
        raise _unauthenticated("invalid_credentials", "invalid credentials")
