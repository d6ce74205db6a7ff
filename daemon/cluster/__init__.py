"""A fleet of daemons sharing approvals, rate limits and runs through Redis (or Valkey).

Imported only when ``server.cluster`` is configured: a single daemon needs neither Redis
nor the ``cluster`` extra.
"""

from execgate.daemon.cluster._approvals import SharedApprovals
from execgate.daemon.cluster._cluster import Cluster, ClusterUnavailable
from execgate.daemon.cluster._limits import SharedRateLimiter

__all__ = ["Cluster", "ClusterUnavailable", "SharedApprovals", "SharedRateLimiter"]
