"""The sandbox step: the one place a tool call becomes a (confined) process."""

from execgate.daemon.sandbox._host import HostSupport, Layers, layers_for
from execgate.daemon.sandbox._spawner import ExitStatus, Job, Spawner, SpawnerError, job_message

__all__ = ["ExitStatus", "HostSupport", "Job", "Layers", "Spawner", "SpawnerError", "job_message",
           "layers_for"]
