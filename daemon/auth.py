"""Identity: the credential on a call, and nothing else, becomes its Principal.

This release verifies bearer API keys (``server.auth.api_keys``, and the local token of the
embedded default). Keys are compared in constant time on their SHA-256 digests, every key
every time, so neither timing nor length says how close a guess was. A credential that is
present but wrong is refused even where none is required: a bad credential never quietly
becomes an anonymous call.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Sequence

from execgate.daemon.config import AuthConfig
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


def _unauthenticated(reason: str) -> Denial:
    return Denial(DenialKind.UNAUTHENTICATED, reason, "server.auth")


class Authenticator:
    """Turns a call's metadata into a Principal, or refuses it."""

    def __init__(self, auth: AuthConfig) -> None:
        self._enabled = auth.enabled
        self._require = auth.require_auth
        self._excluded = tuple(PATH_ALIASES.get(p, p) for p in auth.excluded_paths)
        self._keys = [(k.name, hashlib.sha256(k.key.encode()).digest())
                      for k in auth.named_api_keys()]

    def _is_excluded(self, method: str) -> bool:
        return any(method == p or (p.endswith("/") and method.startswith(p))
                   for p in self._excluded)

    def authenticate(self, method: str, metadata: Metadata) -> Principal:
        """The Principal for a call to ``method``; raises Denial(UNAUTHENTICATED)."""
        if not self._enabled:
            return ANONYMOUS
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            if self._is_excluded(method) or not self._require:
                return ANONYMOUS
            raise _unauthenticated("no credentials: send 'authorization: Bearer <token>'")
        if len(values) > 1:
            raise _unauthenticated("more than one authorization header")
        value = values[0]
        if isinstance(value, bytes) or len(value) > MAX_CREDENTIAL_BYTES:
            raise _unauthenticated("malformed authorization header")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated("authorization must be 'Bearer <token>'")
        if not token.isascii() or not token.isprintable():
            raise _unauthenticated("invalid credentials")
        digest = hashlib.sha256(token.encode()).digest()
        matched = None
        for name, key in self._keys:  # no early exit: every key is compared every time
            if hmac.compare_digest(digest, key):
                matched = name
        if matched is None:
            raise _unauthenticated("invalid credentials")
        return Principal(subject=matched, method="api_key")
