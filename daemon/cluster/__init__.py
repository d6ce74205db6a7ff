"""A fleet of daemons sharing approvals, rate limits and runs through Redis (or Valkey).

Imported only when ``server.cluster`` is configured: a single daemon needs neither Redis
nor the ``cluster`` extra.
"""

from execgate.daemon.cluster._cluster import Cluster, ClusterUnavailable

__all__ = ["Cluster", "ClusterUnavailable"]
