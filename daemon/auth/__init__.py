"""The identity step: API keys and JWTs (via JWKS) become a Principal."""

from execgate.daemon.auth._authenticator import (
    MAX_CREDENTIAL_BYTES,
    PATH_ALIASES,
    AuthenticationFailed,
    Authenticator,
    current_principal,
    failure_reason,
)
from execgate.daemon.auth._jwt import JwksCache, JwtVerifier, TokenError, check_jwks_url
from execgate.daemon.auth._keys import ApiKeys, digest

__all__ = ["MAX_CREDENTIAL_BYTES", "PATH_ALIASES", "ApiKeys", "AuthenticationFailed",
           "Authenticator", "JwksCache", "JwtVerifier", "TokenError", "check_jwks_url",
           "current_principal", "digest", "failure_reason"]
