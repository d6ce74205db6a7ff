"""Limits: how many runs the daemon carries at once."""

from __future__ import annotations

from execgate.daemon.model import Denial, DenialKind


class RunSlots:
    """A server-wide cap on concurrent runs; a full daemon refuses rather than queues."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0

    def acquire(self) -> None:
        """Take a slot or raise Denial(RESOURCE_EXHAUSTED)."""
        if self._used >= self._capacity:
            raise Denial(DenialKind.RESOURCE_EXHAUSTED,
                         f"the daemon is running its maximum of {self._capacity} calls; "
                         "retry later", "server.max_concurrent_runs")
        self._used += 1

    def release(self) -> None:
        """Give a slot back."""
        self._used -= 1

    @property
    def used(self) -> int:
        """Runs in progress."""
        return self._used
