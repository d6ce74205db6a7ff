"""The daemon under sustained mixed load: nothing unexpected, nothing leaked.

    .venv/bin/python bench/soak.py [--clients 20] [--minutes 10] [--seed 1]

Starts a real daemon on loopback and runs ``--clients`` clients for ``--minutes`` doing what
agents do: quick calls, output floods, timeouts, denied calls, approvals answered by the
caller's callback (approved and denied), streams cancelled or dropped mid-run, detached
runs read again from another connection, and function tools. After a warm-up it notes the
daemon's footprint; at the end it checks that

- every call ended as its kind of call should (zero unexpected outcomes);
- no run is left: no process but the sandbox helper and its idle pooled inits (no more of
  them than after warm-up), no zombie, no job cgroup with a process in it but a pooled init
  waiting in its own;
- the daemon's open fds and RSS are within 10% of the warm-up's, each measured once the
  load has stopped and the daemon has given its heap's free memory back (glibc keeps freed
  output buffers scattered in its arenas; the daemon trims them: execgate.daemon.heap);
- every run was audited exactly once: one ``run.started`` and one ``run.exited`` per run id,
  and every run a client saw among them.

Exits 0 when all of that holds; prints the figures either way. ``tests/soak/test_soak.py``
runs a one-minute version in CI (marked ``soak``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from execgate.client import (
    ApprovalDeniedError,
    Client,
    ExitReason,
    PolicyDeniedError,
    Started,
)
from execgate.daemon.heap import TRIM_DELAY
from execgate.v1 import exec_pb2, exec_pb2_grpc
from tests.conftest import API_KEY, TEST_POLICY, Daemon, start_daemon

POLICY = TEST_POLICY.replace(
    "tools:\n", "approvals:\n  timeout: 30s\n  approvers: [{subject: tester}]\ntools:\n"
    "  gated:\n    type: command\n    working_directory: ./workspace\n"
    "    allowed_commands: [touch]\n    require_approval: true\n", 1,
).replace("agents:\n", "agents:\n  gate:\n    tools: [gated]\n", 1).replace(
    "max_output_bytes: 1MiB", "max_output_bytes: 256KiB", 1).replace(
    "tools:\n", "runs:\n  retention: 2s\ntools:\n", 1)
"""The test policy, with an agent whose calls need approval (the caller may approve its
own), a smaller output limit, so that floods end sooner, and a short retention of finished
runs: their output is held by design (64 MiB at most, ``calls.RETAINED_BYTES``), and the
footprint is judged once every run is forgotten."""
TOLERANCE = 0.10
SETTLE_SECONDS = 60.0


@dataclass
class Tally:
    """What the clients did and saw, shared by their threads."""

    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expect(self, action: str, ok: bool, saw: object, run_id: str = "") -> None:
        with self.lock:
            self.outcomes[action] += 1
            if run_id:
                self.run_ids.add(run_id)
            if not ok:
                self.unexpected.append(f"{action}: {saw!r}"[:300])


Action = Callable[[Client, str, random.Random, Tally], None]


def quick(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    word = f"w{rng.randrange(10**6)}"
    r = client.run(["echo", word], agent="dev", tool="shell")
    tally.expect("quick", r.exit_code == 0 and r.stdout == f"{word}\n".encode(), r, r.run_id)


def flood(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    r = client.run(["yes", "flood"], agent="dev", tool="shell")
    tally.expect("flood", r.reason is ExitReason.OUTPUT_LIMIT, r.exit, r.run_id)


def timeout(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    r = client.run(["sleep", "30"], agent="dev", tool="shell", timeout=0.3)
    tally.expect("timeout", r.reason is ExitReason.TIMEOUT, r.exit, r.run_id)


def denial(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    try:
        r = client.run(["rm", "-rf", "/"], agent="dev", tool="shell")
    except PolicyDeniedError as e:
        tally.expect("denial", e.rule == "tools.shell.denied_commands", e.rule)
        return
    tally.expect("denial", False, r, r.run_id)


def approved(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    name = f"approved-{rng.randrange(10**9)}"
    r = client.run(["touch", name], agent="gate", tool="gated", on_approval=lambda _: True)
    tally.expect("approved", r.exit_code == 0, r.exit, r.run_id)


def refused(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    try:
        r = client.run(["touch", "refused"], agent="gate", tool="gated",
                       on_approval=lambda _: False)
    except ApprovalDeniedError:
        tally.expect("refused", True, None)
        return
    tally.expect("refused", False, r, r.run_id)


def cancelled(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    """The caller stops reading after the run started: the client cancels the call."""
    events = client.stream(["sh", "-c", "echo up; exec sleep 30"], agent="dev", tool="shell")
    first = next(events)
    events.close()
    tally.expect("cancelled", isinstance(first, Started), first,
                 first.run_id if isinstance(first, Started) else "")


def dropped(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    """The caller's connection goes away mid-run, without a cancel."""
    channel = grpc.insecure_channel(target)
    call = exec_pb2_grpc.ExecServiceStub(channel).Execute(
        iter([exec_pb2.ExecuteRequest(start=exec_pb2.StartCall(
            agent="dev", tool="shell", argv=["sh", "-c", "echo up; exec sleep 30"]))]),
        metadata=(("authorization", f"Bearer {API_KEY}"),))
    first = next(call)
    channel.close()
    tally.expect("dropped", first.HasField("accepted"), first, first.accepted.run_id)


def detached(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    """A detached run, left by its starter and read again from another connection, as an
    agent that restarted would."""
    handle = client.start(["sh", "-c", "echo a; sleep 0.2; echo b"], agent="dev",
                          tool="shell")
    with Client(target, token=API_KEY) as again:
        r = again.handle(handle.id).wait()
    tally.expect("detached", r.exit_code == 0 and r.stdout == b"a\nb\n", r, handle.id)


def function(client: Client, target: str, rng: random.Random, tally: Tally) -> None:
    which = rng.choice(["read", "write", "list"])
    if which == "read":
        r = client.call("read_file", agent="dev", path="small.txt")
        ok = r.stdout == b"hello\n"
    elif which == "write":
        r = client.call("write_file", agent="dev", path=f"w{rng.randrange(50)}.txt",
                        content="x" * rng.randrange(1000))
        ok = r.exit_code == 0
    else:
        r = client.call("list_directory", agent="dev", path=".")
        ok = b"small.txt" in r.stdout
    tally.expect(f"function.{which}", ok, r.exit, r.run_id)


MIX: dict[Action, int] = {quick: 30, function: 20, flood: 6, timeout: 6, denial: 10,
                          approved: 8, refused: 5, cancelled: 6, dropped: 4, detached: 4}
"""Each kind of call and its weight in the mix."""


def clients(target: str, count: int, seconds: float, seed: int, tally: Tally) -> None:
    """``count`` clients, each its own connection and thread, calling for ``seconds``."""
    end = time.monotonic() + seconds

    def one(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        actions, weights = list(MIX), list(MIX.values())
        with Client(target, token=API_KEY) as client:
            while time.monotonic() < end:
                action = rng.choices(actions, weights)[0]
                try:
                    action(client, target, rng, tally)
                except Exception as exc:  # an outcome nobody expected: recorded, not fatal
                    tally.expect(action.__name__, False, exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@dataclass(frozen=True)
class Footprint:
    """What the daemon holds at one moment."""

    fds: int | None
    """None where /proc does not show them (a non-dumpable daemon, to another user)."""
    rss: int
    processes: int
    """The daemon's descendants: the sandbox helper, its pooled inits, and any job."""
    strays: tuple[str, ...]
    """Descendants that are neither the helper nor an idle pooled init: a job or a leftover."""
    zombies: int
    busy_cgroups: tuple[str, ...]
    """Job cgroups with a process other than an idle pooled init (which waits in its own)."""


HELPER = "execgate.daemon.sandbox._helper"


def _cgroup_parents(daemon: psutil.Process) -> list[Path]:
    """The ``execgate-<pid>`` directories in which the daemon's jobs get cgroups."""
    names = {f"execgate-{p.pid}" for p in [daemon, *daemon.children(recursive=True)]}
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in list(dirs):
            if d in names:
                found.append(Path(top) / d)
                dirs.remove(d)
            elif d.startswith("job-"):
                dirs.remove(d)  # nothing of ours below another's jobs
    return found


def _idle_init(p: psutil.Process, helpers: set[int]) -> bool:
    """A pooled init waiting for its job: the helper's child, running the helper's code,
    with no process of its own yet."""
    return p.ppid() in helpers and HELPER in " ".join(p.cmdline()) and not p.children()


def footprint(daemon: psutil.Process, parents: list[Path]) -> Footprint:
    """The daemon's footprint now."""
    children = daemon.children(recursive=True)
    helpers = {p.pid for p in daemon.children()}
    zombies, idle, strays = 0, set(), []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            zombies += child.status() == psutil.STATUS_ZOMBIE
            if _idle_init(child, helpers):
                idle.add(child.pid)
            elif child.pid not in helpers:
                strays.append(f"{child.pid} {' '.join(child.cmdline())[:80]}")
    busy = []
    for parent in parents:
        for job in parent.glob("job-*"):
            with contextlib.suppress(OSError):  # removed meanwhile
                if {int(p) for p in (job / "cgroup.procs").read_text().split()} - idle:
                    busy.append(job.name)
    fds = None
    with contextlib.suppress(psutil.AccessDenied):
        fds = daemon.num_fds()
    return Footprint(fds=fds, rss=daemon.memory_info().rss,
                     processes=len(children), strays=tuple(strays), zombies=zombies,
                     busy_cgroups=tuple(busy))


def audited(d: Daemon) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """run.started, run.exited and run.forgotten events, counted by run id."""
    started: Counter[str] = Counter()
    exited: Counter[str] = Counter()
    forgotten: Counter[str] = Counter()
    for line in list(d.stderr_lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("audit"):
            if record.get("event") == "run.started":
                started[record["run_id"]] += 1
            elif record.get("event") == "run.exited":
                exited[record["run_id"]] += 1
            elif record.get("event") == "run.forgotten":
                forgotten[record["run_id"]] += 1
    return started, exited, forgotten


def settle(d: Daemon, daemon: psutil.Process, parents: list[Path]) -> Footprint:
    """The footprint once every run has been audited as ended and no job is left, and the
    daemon has trimmed its heap since (it does, TRIM_DELAY after it last did something:
    execgate.daemon.heap); or as it is after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        started, exited, forgotten = audited(d)
        now = footprint(daemon, parents)
        idle = (set(started) <= set(exited) <= set(forgotten) and not now.strays
                and not now.zombies and not now.busy_cgroups)
        if idle:
            time.sleep(TRIM_DELAY + 1)
            return footprint(daemon, parents)
        if time.monotonic() > deadline:
            return now
        time.sleep(0.2)  # a bench polls: the tests' never-sleep rule is for assertions


@dataclass
class Report:
    """A soak run's figures and verdict."""

    clients: int
    seconds: float
    warm: Footprint
    end: Footprint
    tally: Tally
    started: Counter[str]
    exited: Counter[str]
    errors: list[str]
    problems: list[str] = field(default_factory=list)

    def judge(self) -> None:
        """Fill ``problems`` with every promise the run broke."""
        p = self.problems
        p += [f"unexpected outcome: {u}" for u in self.tally.unexpected]
        p += [f"daemon error line: {e[:300]}" for e in self.errors]
        if self.end.processes > self.warm.processes:
            p.append(f"processes: {self.end.processes} at the end, {self.warm.processes} after "
                     "warm-up, all idle: the helper's pool of waiting inits grew")
        if self.end.strays:
            p.append(f"processes left: {', '.join(self.end.strays)}")
        if self.end.zombies:
            p.append(f"{self.end.zombies} zombie processes")
        if self.end.busy_cgroups:
            p.append(f"job cgroups with a process in them: {', '.join(self.end.busy_cgroups)}")
        for name in ("fds", "rss"):
            warm, end = getattr(self.warm, name), getattr(self.end, name)
            if warm is not None and end is not None and end > warm * (1 + TOLERANCE):
                p.append(f"{name}: {end} at the end, {warm} after warm-up "
                         f"(+{(end - warm) / warm:.1%})")
        twice = [r for r, n in (self.started + self.exited).items()
                 if self.started[r] != 1 or self.exited[r] != 1]
        if twice:
            p.append(f"runs not audited exactly once (started, exited): {len(twice)}, e.g. "
                     f"{twice[0]} ({self.started[twice[0]]}, {self.exited[twice[0]]})")
        unaudited = self.tally.run_ids - set(self.started)
        if unaudited:
            p.append(f"runs the clients saw but the audit did not: {sorted(unaudited)[:3]}")

    def text(self) -> str:
        """The figures, one per line."""
        calls = sum(self.tally.outcomes.values())
        mix = ", ".join(f"{k} {v}" for k, v in sorted(self.tally.outcomes.items()))
        return "\n".join([
            f"soak: {self.clients} clients for {self.seconds:.0f} s: {calls} calls "
            f"({calls / self.seconds:.1f}/s), {len(self.started)} runs audited",
            f"  mix: {mix}",
            f"  after warm-up: {self.warm}",
            f"  at the end:    {self.end}",
            f"  fds {_change(self.warm.fds, self.end.fds)}, "
            f"rss {_change(self.warm.rss, self.end.rss)}",
            *(f"  PROBLEM {p}" for p in self.problems),
            "  ok" if not self.problems else f"  {len(self.problems)} problem(s)",
        ])


def _change(warm: int | None, end: int | None) -> str:
    if warm is None or end is None:
        return "not readable here (the daemon is not dumpable; run as root to see them)"
    return f"{end / warm - 1:+.1%}"


def soak(root: Path, count: int, seconds: float, seed: int = 1,
         warmup: float | None = None, env: dict[str, str] | None = None) -> Report:
    """Run the soak in ``root`` (the daemon gets ``env``) and judge it."""
    d = start_daemon(root, POLICY, env)
    try:
        (d.workspace / "small.txt").write_text("hello\n")
        daemon = psutil.Process(d.proc.pid)
        warm_seconds = warmup if warmup is not None else max(5.0, seconds / 10)
        warm_tally = Tally()
        clients(d.target, count, warm_seconds, seed + 7919, warm_tally)
        parents = _cgroup_parents(daemon)
        warm = settle(d, daemon, parents)
        since = len(d.stderr_lines)
        tally = Tally()
        clients(d.target, count, seconds, seed, tally)
        end = settle(d, daemon, parents)
        started, exited, _ = audited(d)
        report = Report(count, seconds, warm, end, tally, started, exited, d.errors(since))
        report.judge()
        return report
    finally:
        d.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="execgate-soak-") as root:
        os.chmod(root, 0o755)  # jobs run as nobody when this runs as root
        report = soak(Path(root), args.clients, args.minutes * 60, args.seed)
    print(report.text())
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
