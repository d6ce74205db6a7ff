"""One policy and everything derived from it, swapped whole on reload.

A call reads the current ``Snapshot`` once, when it is authenticated, and keeps that one to
its end (``Current.get``): a reload between two steps of a call cannot mix two policies,
and a run started under a policy finishes under it. A reload builds a new snapshot beside
the old and swaps it in one assignment.

What a reload carries over when its settings did not change: the rate limiter's buckets, the
failed-authentication counts and the JWKS cache, so that a reload neither resets a limit an
attacker ran into nor makes every token fail while keys are fetched again.

Some settings belong to what was built at start and need a restart (``RESTART_ONLY``): a
reload that changes one keeps the old value and says so.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

from execgate.daemon.access import Access
from execgate.daemon.auth import Authenticator, JwksCache, JwtVerifier
from execgate.daemon.config import PolicyConfig, RateLimitConfig
from execgate.daemon.limits import FailedAttempts, RateLimiter
from execgate.daemon.policy import Policy

RESTART_ONLY = ("server.port", "server.listen", "server.tls", "server.allow_remote_plaintext",
                "server.unix_uids", "server.max_concurrent_runs", "server.cluster", "approvals",
                "logger")
"""Settings read once at start: listeners, TLS files, unix socket peers, run slots, the
fleet (its Redis and this host's name in it), the pending approvals' rules and the
logger."""


@dataclass(frozen=True)
class Snapshot:
    """The policy as one call sees it."""

    config: PolicyConfig
    policy: Policy
    access: Access
    limiter: RateLimiter
    authenticator: Authenticator
    failed: FailedAttempts
    jwks: JwksCache | None


_call_snapshot: contextvars.ContextVar[Snapshot | None] = contextvars.ContextVar(
    "call_snapshot", default=None)


class Current:
    """The snapshot new calls get."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def get(self) -> Snapshot:
        """The calling gRPC call's snapshot: the current one at its first ``get``, the same
        one after (each call runs in a context of its own)."""
        pinned = _call_snapshot.get()
        if pinned is None:
            pinned = self.snapshot
            _call_snapshot.set(pinned)
        return pinned


async def build(config: PolicyConfig, policy: Policy, previous: Snapshot | None = None,
                make_limiter: Callable[[RateLimitConfig], RateLimiter] = RateLimiter,
                ) -> Snapshot:
    """A snapshot of ``config``, keeping ``previous``'s state where its settings are equal.
    A new JWKS cache is fetched before it is returned (no window in which every token
    fails) and started; the caller stops the previous one once this one is in force.
    ``make_limiter`` makes a new rate limiter (a fleet's takes from buckets in Redis)."""
    auth, old = config.server.auth, previous.config.server.auth if previous else None
    limiter = (previous.limiter if previous is not None
               and previous.config.server.rate_limiting == config.server.rate_limiting
               else make_limiter(config.server.rate_limiting))
    failed = (previous.failed if previous is not None and old is not None
              and (old.max_failed_attempts, old.failed_attempts_window)
              == (auth.max_failed_attempts, auth.failed_attempts_window)
              else FailedAttempts(auth.max_failed_attempts, auth.failed_attempts_window))
    jwks = None
    if auth.jwt:
        assert auth.jwks_url
        if (previous is not None and previous.jwks is not None and old is not None
                and (old.jwks_url, old.refresh_interval, old.jwks_cooldown)
                == (auth.jwks_url, auth.refresh_interval, auth.jwks_cooldown)):
            jwks = previous.jwks
        else:
            jwks = JwksCache(auth.jwks_url, auth.refresh_interval, auth.jwks_cooldown)
            await jwks.refresh()
            jwks.start()
    authenticator = Authenticator(auth, JwtVerifier(auth, jwks) if jwks else None, failed)
    return Snapshot(config=config, policy=policy, access=Access(config), limiter=limiter,
                    authenticator=authenticator, failed=failed, jwks=jwks)


def keep_restart_only(old: PolicyConfig, new: PolicyConfig) -> tuple[PolicyConfig, list[str]]:
    """``new`` with ``old``'s value for each restart-only setting, and the settings that
    differed (a reload cannot apply them)."""
    changed: list[str] = []
    server: dict[str, object] = {}
    top: dict[str, object] = {}
    for key in RESTART_ONLY:
        section, _, name = key.partition(".")
        was, now = ((getattr(old.server, name), getattr(new.server, name)) if name
                    else (getattr(old, section), getattr(new, section)))
        if was != now:
            changed.append(key)
            (server if name else top)[name or section] = was
    if server:
        top["server"] = new.server.model_copy(update=server)
    return new.model_copy(update=top), changed
