"""What cluster mode adds to the ``true`` round trip (run by hand, never in the tests).
Target: under 0.5 ms on loopback.

    .venv/bin/python bench/bench_cluster.py

Two daemons side by side in one run, the same policy (a per-user rate limit, far above what
the run calls) but for ``server.cluster``: one alone, with its limiter in memory; one in a
fleet of one, with a redis-server of its own on a unix socket, taking each call's token from
Redis (a Lua script) and registering its runs there. Calls alternate between the daemons in
blocks, so drift on the machine falls on both; each of five rounds compares medians, and
the median of the rounds is the figure, the rounds' spread its noise. The CPU time each
daemon (and redis-server) spent per call is the steadier figure on a noisy machine: on 2
cores, CPU spent anywhere is latency. Then the shared limiter's own part, in this process:
one token taken from Redis, against a PING. The daemons log to files, as under a service
manager (a reader thread here would take this process's GIL from the calls it times).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from execgate.daemon.cluster import Cluster, SharedRateLimiter
from execgate.daemon.config import ClusterConfig, RateLimitConfig
from execgate.daemon.model import Principal
from tests.cluster.conftest import CLUSTER_KEY, RedisServer, cluster_policy
from tests.conftest import TEST_POLICY, Daemon, start_daemon

ROUNDS, BLOCKS, CALLS = 5, 20, 20
LIMITED = TEST_POLICY.replace(
    "server:\n", "server:\n  rate_limiting: {per_user: true, requests_per_minute: 1000000, "
                 "burst: 1000000}\n", 1)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _round(daemons: dict[str, Daemon], redis: psutil.Process,
           cpu: dict[str, list[float]]) -> dict[str, float]:
    """One round: blocks of calls to each daemon in turn; the median round trip of each.
    Adds each one's CPU seconds per call (and redis-server's, under "redis") to ``cpu``."""
    times: dict[str, list[float]] = {name: [] for name in daemons}
    spent = dict.fromkeys([*daemons, "redis"], 0.0)
    procs = {name: psutil.Process(d.proc.pid) for name, d in daemons.items()}
    clients = {name: d.client() for name, d in daemons.items()}
    try:
        for _ in range(BLOCKS):
            for name, client in clients.items():
                before, redis_before = _cpu(procs[name]), _cpu(redis)
                for _ in range(CALLS):
                    start = time.perf_counter()
                    client.run(["true"], agent="dev")
                    times[name].append(time.perf_counter() - start)
                spent[name] += _cpu(procs[name]) - before
                if name == "cluster":
                    spent["redis"] += _cpu(redis) - redis_before
    finally:
        for client in clients.values():
            client.close()
    for name, seconds in spent.items():
        cpu.setdefault(name, []).append(seconds / (BLOCKS * CALLS))
    return {name: statistics.median(t) for name, t in times.items()}


async def limiter_cost(redis_url: str, calls: int = 2000) -> tuple[float, float]:
    """Seconds per token taken by SharedRateLimiter, and per PING, on one connection."""
    cluster = Cluster(ClusterConfig(redis_url=redis_url, advertise="127.0.0.1:1"))
    limiter = SharedRateLimiter(RateLimitConfig(
        enabled=True, per_user=True, requests_per_minute=10**6, burst=10**6), cluster)
    who = Principal("bench", "api_key")
    try:
        for _ in range(100):
            await limiter.take(who)
        start = time.perf_counter()
        for _ in range(calls):
            await limiter.take(who)
        take = (time.perf_counter() - start) / calls
        start = time.perf_counter()
        for _ in range(calls):
            await cluster.redis.ping()
        return take, (time.perf_counter() - start) / calls
    finally:
        await cluster.redis.aclose()


def main() -> None:
    roots = [tempfile.TemporaryDirectory() for _ in range(3)]
    redis = RedisServer(Path(roots[2].name))
    redis.start()
    daemons: dict[str, Daemon] = {}
    try:
        daemons["alone"] = start_daemon(Path(roots[0].name), LIMITED,
                                        log=Path(roots[0].name) / "daemon.log")
        daemons["cluster"] = start_daemon(
            Path(roots[1].name), cluster_policy(redis.url, "bench-1", policy=LIMITED),
            env={"EXECGATE_CLUSTER_KEY": CLUSTER_KEY}, log=Path(roots[1].name) / "daemon.log")
        for d in daemons.values():
            with d.client() as client:
                for _ in range(20):  # warm-up: the pooled inits, the channel, Redis's scripts
                    client.run(["true"], agent="dev")
        assert redis.proc is not None
        cpu: dict[str, list[float]] = {}
        rounds = [_round(daemons, psutil.Process(redis.proc.pid), cpu) for _ in range(ROUNDS)]
        take, ping = asyncio.run(limiter_cost(redis.url))
    finally:
        for d in daemons.values():
            d.stop()
        redis.kill()
        for root in roots:
            root.cleanup()
    print(f"true round trip, median of {BLOCKS * CALLS} calls per daemon per round, "
          f"{ROUNDS} rounds:")
    for name in daemons:
        print(f"  {name:>8}: " + ", ".join(f"{r[name] * 1e3:.3f} ms" for r in rounds))
    added = [(r["cluster"] - r["alone"]) * 1e3 for r in rounds]
    print(f"cluster mode adds {statistics.median(added):+.3f} ms (rounds "
          + ", ".join(f"{a:+.3f}" for a in added) + "); target: under 0.5 ms")
    print("CPU per call, median of the rounds: " + ", ".join(
        f"{name} {statistics.median(c) * 1e3:.3f} ms" for name, c in cpu.items()))
    print(f"of which the shared rate limit: {take * 1e3:.3f} ms a token "
          f"(a PING: {ping * 1e3:.3f} ms)")


if __name__ == "__main__":
    main()
