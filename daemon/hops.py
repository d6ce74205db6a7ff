"""Calls one daemon of a fleet makes to another on a caller's behalf: the hop, asserted.

A host asked about a run that lives on another host calls the owner over the daemons' own
gRPC, as the caller. The owner cannot check the caller's credential (a client certificate
or a unix peer does not travel), so the forwarding host asserts who the caller is, signed
with the fleet's shared secret (``server.cluster.key_env``):

    HMAC-SHA256(secret, method | principal | SHA-256(request) | expiry | forwarding host |
                target host)

in the call's metadata. The owner verifies it before the handler runs; a forged, altered or
expired assertion is refused as UNAUTHENTICATED, and so is any assertion sent to a daemon
that is not in a fleet. An assertion is good for HOP_TTL seconds and only for the one
method and request it was made for. A hop is answered from the owner's own runs only: it
is never forwarded again.

Outside ``execgate.daemon.cluster``: a daemon alone refuses hops without importing Redis.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from execgate.daemon.model import Denial, DenialKind, Principal

HOP_TTL = 30.0
"""Seconds an assertion is valid for: long enough for clocks a little apart, short enough
that a captured one is soon worthless."""
PRINCIPAL = "execgate-hop-principal"
EXPIRES = "execgate-hop-expires"
FROM = "execgate-hop-from"
SIGNATURE = "execgate-hop-signature"
RULE = "server.cluster.key_env"
Metadata = Sequence[tuple[str, Any]]


def is_hop(metadata: Metadata) -> bool:
    """Whether a call claims to come from another daemon of the fleet."""
    return any(name in (PRINCIPAL, SIGNATURE) for name, _ in metadata)


def refused(reason: str) -> Denial:
    """A hop that is not accepted; ``reason`` says why, without the assertion itself."""
    return Denial(DenialKind.UNAUTHENTICATED,
                  f"a forwarded call was refused: {reason}", RULE)


class Hops:
    """Makes and verifies the assertions of one fleet (its shared secret)."""

    def __init__(self, secret: bytes, host_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._host_id = host_id
        self._clock = clock

    def metadata(self, method: str, principal: Principal, request: Message,
                 target: str) -> tuple[tuple[str, str], ...]:
        """The metadata asserting that ``principal`` makes this call on host ``target``, for
        HOP_TTL seconds (no other host accepts it)."""
        who = _encoded(principal)
        expires = f"{self._clock() + HOP_TTL:.3f}"
        return ((PRINCIPAL, who), (EXPIRES, expires), (FROM, self._host_id),
                (SIGNATURE, self._sign(method, who, request, expires, self._host_id, target)))

    def verify(self, method: str, metadata: Metadata, request: Message | None) -> Principal:
        """The principal a hop asserts; raises Denial (UNAUTHENTICATED) unless its
        signature holds for this method and request and it has not expired."""
        fields = {name: value for name, value in metadata
                  if name in (PRINCIPAL, EXPIRES, FROM, SIGNATURE)}
        if len(fields) != 4 or not all(isinstance(v, str) for v in fields.values()):
            raise refused("its assertion is incomplete")
        if request is None:
            raise refused(f"{method} is never forwarded")
        expected = self._sign(method, fields[PRINCIPAL], request, fields[EXPIRES],
                              fields[FROM], self._host_id)
        if not hmac.compare_digest(expected, fields[SIGNATURE]):
            raise refused("its signature does not match the fleet's key")
        try:
            expires = float(fields[EXPIRES])
        except ValueError:
            raise refused("its expiry is not a time") from None
        if expires < self._clock():
            raise refused("its assertion has expired")
        return _decoded(fields[PRINCIPAL])

    def _sign(self, method: str, who: str, request: Message, expires: str,
              host_id: str, target: str) -> str:
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        signed = "\n".join((method, who, digest, expires, host_id, target)).encode()
        return hmac.new(self._secret, signed, hashlib.sha256).hexdigest()


def _encoded(principal: Principal) -> str:
    text = json.dumps({"subject": principal.subject, "method": principal.method,
                       "claims": dict(principal.claims), "local": principal.local},
                      sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decoded(who: str) -> Principal:
    """A signed principal: its shape was made by a daemon of the fleet, so a failure here
    is a daemon of another version, refused like a bad signature."""
    try:
        fields = json.loads(base64.urlsafe_b64decode(who))
        return Principal(subject=str(fields["subject"]), method=str(fields["method"]),
                         claims=dict(fields["claims"]), local=bool(fields["local"]))
    except (ValueError, KeyError, TypeError):
        raise refused("its principal cannot be read") from None
