"""Rate limiting: a token bucket per principal (or one for all), and failed authentications
per peer address, on a clock the test turns."""

from __future__ import annotations

import pytest

from execgate.daemon.config import RateLimitConfig
from execgate.daemon.limits import MAX_PEERS, FailedAttempts, RateLimiter
from execgate.daemon.model import Denial, DenialKind, Principal

ALICE = Principal(subject="alice", method="jwt")
BOB = Principal(subject="bob", method="jwt")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **config: object) -> RateLimiter:
    return RateLimiter(RateLimitConfig.model_validate(
        {"enabled": True, "requests_per_minute": 60, "burst": 3, **config}), clock)


def refused(lim: RateLimiter, who: Principal) -> Denial:
    with pytest.raises(Denial) as info:
        lim.check(who)
    return info.value


def test_a_burst_passes_and_the_next_call_is_refused_with_the_wait() -> None:
    lim = limiter(Clock())
    for _ in range(3):
        lim.check(ALICE)
    denial = refused(lim, ALICE)
    assert (denial.kind, denial.rule) == (DenialKind.RESOURCE_EXHAUSTED, "server.rate_limiting")
    assert "retry in 1.0s" in denial.message


def test_tokens_come_back_at_the_configured_rate() -> None:
    clock = Clock()
    lim = limiter(clock)
    for _ in range(3):
        lim.check(ALICE)
    clock.now += 1.0  # 60 a minute: one a second
    lim.check(ALICE)
    refused(lim, ALICE)


def test_per_user_buckets_are_separate() -> None:
    lim = limiter(Clock(), per_user=True)
    for _ in range(3):
        lim.check(ALICE)
    refused(lim, ALICE)
    lim.check(BOB)


def test_without_per_user_everyone_shares_one_bucket() -> None:
    lim = limiter(Clock())
    for _ in range(3):
        lim.check(ALICE)
    refused(lim, BOB)


def test_disabled_rate_limiting_admits_everything() -> None:
    # enabled: false beside settings is a load error (they would look active): write it alone
    lim = RateLimiter(RateLimitConfig.model_validate({"enabled": False}), Clock())
    for _ in range(100):
        lim.check(ALICE)


def exhausted(attempts: FailedAttempts, peer: str) -> bool:
    """Whether ``peer`` is out of attempts (refused by the rule that says so)."""
    try:
        attempts.check(peer)
    except Denial as denial:
        return (denial.kind, denial.rule) == (DenialKind.RESOURCE_EXHAUSTED,
                                              "server.auth.max_failed_attempts")
    return False


def test_an_address_out_of_attempts_is_refused_until_the_window_refills() -> None:
    clock = Clock()
    attempts = FailedAttempts(3, 60.0, clock)
    for _ in range(3):
        assert not exhausted(attempts, "192.0.2.1")
        attempts.record("192.0.2.1")
    assert exhausted(attempts, "192.0.2.1")
    clock.now += 20.0  # one attempt back
    assert not exhausted(attempts, "192.0.2.1")
    attempts.record("192.0.2.1")
    assert exhausted(attempts, "192.0.2.1")


def test_failed_attempts_of_one_address_do_not_touch_another() -> None:
    attempts = FailedAttempts(1, 60.0, Clock())
    attempts.record("192.0.2.1")
    assert exhausted(attempts, "192.0.2.1")
    assert not exhausted(attempts, "192.0.2.2")


def test_an_attacker_rotating_addresses_cannot_grow_the_table() -> None:
    clock = Clock()
    attempts = FailedAttempts(10, 60.0, clock)
    for i in range(MAX_PEERS * 3):
        attempts.record(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(attempts) == MAX_PEERS


def test_the_most_recently_failing_addresses_are_remembered() -> None:
    attempts = FailedAttempts(1, 60.0, Clock())
    attempts.record("192.0.2.1")
    for i in range(MAX_PEERS):
        attempts.record(f"10.0.{i >> 8}.{i & 255}")
    assert exhausted(attempts, f"10.0.{(MAX_PEERS - 1) >> 8}.{(MAX_PEERS - 1) & 255}")
    assert not exhausted(attempts, "192.0.2.1")
