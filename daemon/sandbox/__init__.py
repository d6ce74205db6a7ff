"""The sandbox step: the one place a tool call becomes a process."""

from execgate.daemon.sandbox._spawn import Child, ExitStatus, spawn

__all__ = ["Child", "ExitStatus", "spawn"]
