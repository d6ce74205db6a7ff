"""A fleet of daemons sharing approvals, rate limits and runs through Redis (or Valkey).

Imported only when ``server.cluster`` is configured: a single daemon needs neither Redis
nor the ``cluster`` extra.
"""

try:
    import redis  # noqa: F401  (the cluster extra: only a fleet's daemon needs it)
except ImportError:
    raise ImportError("server.cluster needs Redis's client: pip install "
                      "'execgate[cluster]'") from None

from execgate.daemon.cluster._approvals import SharedApprovals
from execgate.daemon.cluster._cluster import Cluster, ClusterUnavailable
from execgate.daemon.cluster._limits import SharedRateLimiter

__all__ = ["Cluster", "ClusterUnavailable", "SharedApprovals", "SharedRateLimiter"]
