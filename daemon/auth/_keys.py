"""API keys: named, compared in constant time on their SHA-256 digests, storable as digests.

Every key is compared every time (no early exit), so neither timing nor length tells how
close a guess came. A stored ``sha256`` digest (``execgated hash-key``) keeps the key itself
out of the policy and its environment.
"""

from __future__ import annotations

import hashlib
import hmac

from execgate.daemon.config import AuthConfig


def digest(key: str) -> bytes:
    """The digest keys are compared on."""
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured keys, by name."""

    def __init__(self, auth: AuthConfig) -> None:
        self._keys = [(k.name, bytes.fromhex(k.sha256) if k.sha256 else digest(k.key or ""))
                      for k in auth.named_api_keys()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def match(self, token: str) -> str | None:
        """The name of the key ``token`` is, or None."""
        candidate = digest(token)
        matched = None
        for name, key in self._keys:
            if hmac.compare_digest(candidate, key):
                matched = name
        return matched
