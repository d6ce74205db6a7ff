"""What the property tests share."""

from __future__ import annotations

from collections.abc import Callable

from execgate.daemon.model import Denial


def refusal(call: Callable[[], object]) -> Denial | None:
    """The Denial ``call`` raises, or None when it accepts; anything else propagates."""
    try:
        call()
    except Denial as denial:
        return denial
    return None
