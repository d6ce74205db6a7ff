"""execgate side by side with the floor and its peer, in one process and one run.

    .venv/bin/python -m bench [--calls 1000] [--quick] [--skip-swerex]
                              [--json bench/results.json] [--png bench/results.png]

Contenders: ``subprocess.run`` in this process (the floor); execgate with every default
layer and with every layer off (one real daemon on 127.0.0.1, started here); SWE-ReX
(``swerex-remote`` on 127.0.0.1, installed into its own venv under ~/.cache/execgate-bench
on first use). Measurements, each taken from every contender in turn before the next: ``true``
round trips on a warm channel (p50, p99), a stdout flood (``cat`` of a 100 MB text file in
the daemon's workspace: throughput, the server's RSS growth), 8 and 64 concurrent ``sleep
0.5`` (wall time), and the time to the first byte of a command that prints, sleeps a second
and prints again. The table gives ratios against SWE-ReX and the floor; absolute figures
are context only (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench import _chart, _swerex
from bench._common import (
    STREAMING,
    async_round_trips,
    concurrent_runs,
    first_byte,
    local_concurrent,
    local_first_byte,
    local_pipe,
    local_true,
    percentile,
    rss_peak,
    stdout_flood,
    stream_bytes,
    text_file,
)
from tests.conftest import Daemon, start_daemon

HERE = Path(__file__).resolve().parent
CONTENDERS = {"floor": "subprocess.run", "execgate": "execgate",
              "execgate_off": "execgate, layers off", "swerex": "SWE-ReX"}
NOTES = {
    "SWE-ReX first byte": "execute() does not stream: the first byte comes with the response",
    "SWE-ReX concurrency": "its server runs each command with a blocking subprocess.run in its "
                           "event loop, so concurrent commands take turns",
}
"""What a reader needs to read SWE-ReX's figures: they measure SWE-ReX as it is."""
RATIOS = (("execgate", "swerex"), ("execgate_off", "swerex"),
          ("execgate", "floor"), ("execgate_off", "floor"))

# Two tools on one daemon: every default layer, and every layer off. A benchmark runs more
# at once than the per-principal default (32) allows, so the caps are raised for it.
POLICY = """\
sandbox:
  cgroup: ${CGROUP}
tools:
  shell:
    type: command
    working_directory: ./workspace
    max_output_bytes: 512MiB
    max_execution_time: 120s
    allowed_commands: ["true", sh, sleep, cat]
  layers_off:
    type: command
    working_directory: ./workspace
    max_output_bytes: 512MiB
    max_execution_time: 120s
    allowed_commands: ["true", sh, sleep, cat]
    sandbox: {filesystem: off, namespaces: off, view: off, cgroup: off, network: true%s}
agents:
  bench:
    tools: [shell, layers_off]
runs:
  max_running_per_principal: 128
server:
  max_concurrent_runs: 128
  auth:
    enabled: true
    api_keys: [{name: bench, key: "${TEST_API_KEY}"}]
logger:
  level: info
  format: json
"""


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    label: str
    unit: str
    better: str
    """``lower`` or ``higher``."""


@dataclass(frozen=True)
class Settings:
    """How much each measurement does."""

    calls: int
    warmup: int
    flood_bytes: int
    flood_file: Path
    """The stdout flood: ``flood_bytes`` of text, in the daemon's workspace."""
    concurrency: tuple[int, ...]


class Contender(Protocol):
    """A way to run a command, measured the same way as the others."""

    def true_round_trips(self, calls: int, warmup: int) -> list[float]:
        """Seconds per ``true``, after ``warmup`` unmeasured calls."""

    def flood(self, path: Path) -> tuple[float, int, int | None]:
        """Seconds to receive the file at ``path`` as a command's stdout, the bytes received,
        and the server's RSS growth meanwhile (None: no server)."""

    def concurrent(self, count: int) -> float:
        """Seconds for ``count`` ``sleep 0.5`` started at once to all end."""

    def first_byte(self) -> float:
        """Seconds to the first byte of :data:`STREAMING`."""


class Floor:
    """``subprocess.run`` and pipes in this process: nothing between caller and command."""

    def true_round_trips(self, calls: int, warmup: int) -> list[float]:
        local_true(warmup)
        return local_true(calls)

    def flood(self, path: Path) -> tuple[float, int, int | None]:
        return (*local_pipe(stdout_flood(path)), None)

    def concurrent(self, count: int) -> float:
        return local_concurrent(["sleep", "0.5"], count)

    def first_byte(self) -> float:
        return local_first_byte(STREAMING)


@dataclass
class Execgate:
    """One tool of the harness's daemon, called over a warm AsyncClient channel."""

    daemon: Daemon
    tool: str

    def true_round_trips(self, calls: int, warmup: int) -> list[float]:
        return asyncio.run(async_round_trips(self.daemon.target, calls, self.tool,
                                             warmup=warmup))

    def flood(self, path: Path) -> tuple[float, int, int | None]:
        with rss_peak(self.daemon.proc.pid) as rss:  # the command's cwd is the workspace
            seconds, received = asyncio.run(stream_bytes(
                self.daemon.target, stdout_flood(path.relative_to(self.daemon.workspace)),
                self.tool))
        return seconds, received, rss.growth

    def concurrent(self, count: int) -> float:
        return asyncio.run(concurrent_runs(self.daemon.target, ["sleep", "0.5"], count,
                                           self.tool))

    def first_byte(self) -> float:
        return asyncio.run(first_byte(self.daemon.target, STREAMING, self.tool))


@dataclass
class Swerex:
    """SWE-ReX's ``RemoteRuntime.execute``, driven by a client in SWE-ReX's own venv."""

    server: _swerex.SwerexServer

    def true_round_trips(self, calls: int, warmup: int) -> list[float]:
        samples: list[float] = self.server.measure("true", calls, warmup)["samples"]
        return samples

    def flood(self, path: Path) -> tuple[float, int, int | None]:
        with rss_peak(self.server.pid) as rss:
            result = self.server.measure("flood", str(path))
        return result["seconds"], result["bytes"], rss.growth

    def concurrent(self, count: int) -> float:
        seconds: float = self.server.measure("concurrent", count)["seconds"]
        return seconds

    def first_byte(self) -> float:
        # SWE-ReX does not stream: the first byte comes with the whole response.
        seconds: float = self.server.measure("first-byte")["seconds"]
        return seconds


def metrics(settings: Settings) -> tuple[Metric, ...]:
    """The table's rows: every row is always there, empty where it was not measured."""
    return (Metric("true_p50", "`true` p50", "ms", "lower"),
            Metric("true_p99", "`true` p99", "ms", "lower"),
            Metric("stdout_throughput", f"{settings.flood_bytes // 10**6} MB stdout", "MB/s",
                   "higher"),
            Metric("stdout_rss_growth", "server RSS growth", "MiB", "lower"),
            Metric("concurrent_8", "8 x sleep 0.5", "s", "lower"),
            Metric("concurrent_64", "64 x sleep 0.5", "s", "lower"),
            Metric("first_byte", "first byte", "ms", "lower"))


def measure(contenders: dict[str, Contender],
            settings: Settings) -> dict[str, dict[str, float | None]]:
    """Every measurement from every contender, one measurement at a time (so that the
    contenders meet the machine in the same state), keyed by metric and contender."""
    values: dict[str, dict[str, float | None]] = {}

    def each(what: str, take: Callable[[Contender], dict[str, float | None]]) -> None:
        for name, contender in contenders.items():
            print(f"  {what}: {CONTENDERS[name]}", file=sys.stderr, flush=True)
            for key, value in take(contender).items():
                values.setdefault(key, {})[name] = value

    def round_trips(c: Contender) -> dict[str, float | None]:
        samples = c.true_round_trips(settings.calls, settings.warmup)
        return {"true_p50": percentile(samples, 0.5) * 1e3,
                "true_p99": percentile(samples, 0.99) * 1e3}

    def flood(c: Contender) -> dict[str, float | None]:
        seconds, received, growth = c.flood(settings.flood_file)
        if received != settings.flood_bytes:
            raise RuntimeError(f"flood: {received} bytes of {settings.flood_bytes} arrived")
        return {"stdout_throughput": received / seconds / 1e6,
                "stdout_rss_growth": None if growth is None else growth / 2**20}

    def concurrent(c: Contender, count: int) -> dict[str, float | None]:
        return {f"concurrent_{count}": c.concurrent(count)}

    each(f"`true` x {settings.calls}", round_trips)
    each(f"{settings.flood_bytes} bytes of stdout", flood)
    for count in settings.concurrency:
        each(f"{count} x sleep 0.5", functools.partial(concurrent, count=count))
    each("first byte", lambda c: {"first_byte": c.first_byte() * 1e3})
    return values


def ratio(row: dict[str, Any], subject: str, reference: str) -> float | None:
    """``subject``'s value over ``reference``'s, where both were measured."""
    a, b = row["values"].get(subject), row["values"].get(reference)
    return None if a is None or not b else float(a) / float(b)


def report(settings: Settings, values: dict[str, dict[str, float | None]],
           skipped: dict[str, str], load: tuple[float, float]) -> dict[str, Any]:
    """The run as JSON: machine, settings, what was skipped and why, and one row per
    metric with every contender's value (null: not measured) and the ratios."""
    rows = []
    for m in metrics(settings):
        row: dict[str, Any] = {"metric": m.key, "label": m.label, "unit": m.unit,
                               "better": m.better,
                               "values": {name: values.get(m.key, {}).get(name)
                                          for name in CONTENDERS}}
        row["ratios"] = {f"{s}/{r}": ratio(row, s, r) for s, r in RATIOS}
        rows.append(row)
    return {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release,
                        "load_before": load[0], "load_after": load[1],
                        "euid": os.geteuid()},
            "settings": {"calls": settings.calls, "warmup": settings.warmup,
                         "flood_bytes": settings.flood_bytes,
                         "concurrency": list(settings.concurrency)},
            "contenders": CONTENDERS, "skipped": skipped, "notes": NOTES, "rows": rows}


def _cell(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.3g}{suffix}"


def table(results: dict[str, Any]) -> str:
    """The ratios, and the absolute figures they come from."""
    heads = [f"{s} / {r}".replace("execgate_off", "off").replace("swerex", "SWE-ReX")
             for s, r in RATIOS]
    lines = ["ratios (value / reference; see `better` for which way is good)",
             f"{'':<26}" + "".join(f"{h:>22}" for h in heads)]
    for row in results["rows"]:
        label = f"{row['label']} ({row['better']})"
        lines.append(f"{label:<26}" + "".join(f"{_cell(row['ratios'][f'{s}/{r}'], 'x'):>22}"
                                             for s, r in RATIOS))
    lines += ["", "absolute figures (context only)",
              f"{'':<26}" + "".join(f"{n:>22}" for n in CONTENDERS.values())]
    for row in results["rows"]:
        label = f"{row['label']} ({row['unit']})"
        lines.append(f"{label:<26}" + "".join(f"{_cell(row['values'][n]):>22}"
                                             for n in CONTENDERS))
    machine = results["machine"]
    lines.append(f"\n{machine['cores']} cores, Linux {machine['kernel']}, load average "
                 f"{machine['load_before']:.2f} before and {machine['load_after']:.2f} after")
    lines += [f"skipped {what}: {why}" for what, why in results["skipped"].items()]
    lines += [f"note, {what}: {why}" for what, why in results["notes"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, help="`true` round trips (default 1000; 100 quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100 calls, 10 MB of stdout, no 64-concurrent")
    parser.add_argument("--skip-swerex", action="store_true",
                        help="leave SWE-ReX out (when it cannot be installed)")
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    parser.add_argument("--png", type=Path, default=HERE / "results.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every contender through every measurement; print, write JSON, draw."""
    args = parse_args(argv)
    calls = args.calls or (100 if args.quick else 1000)
    flood_bytes = 10**7 if args.quick else 10**8
    skipped = {} if not args.quick else {"64 x sleep 0.5": "--quick"}
    run_as = ", run_as: root" if os.geteuid() == 0 else ""
    load_before = os.getloadavg()[0]
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # Its log to a file, as under a service manager: read by a thread of this process it
        # would take the measuring client's GIL (SWE-ReX's server log is read here, but its
        # client runs in a process of its own).
        daemon = start_daemon(root, POLICY % run_as, log=root / "execgated.log")
        stack.callback(daemon.stop)
        settings = Settings(calls=calls, warmup=min(50, calls), flood_bytes=flood_bytes,
                            flood_file=text_file(daemon.workspace / "flood.txt", flood_bytes),
                            concurrency=(8,) if args.quick else (8, 64))
        contenders: dict[str, Contender] = {"floor": Floor(),
                                            "execgate": Execgate(daemon, "shell"),
                                            "execgate_off": Execgate(daemon, "layers_off")}
        if args.skip_swerex:
            skipped["SWE-ReX"] = "--skip-swerex"
        else:
            try:
                python = _swerex.install(_swerex.venv_dir())
                contenders["swerex"] = Swerex(stack.enter_context(_swerex.serve(python)))
            except _swerex.SwerexUnavailable as e:
                skipped["SWE-ReX"] = str(e)
                print(f"SWE-ReX left out: {e}", file=sys.stderr)
        values = measure(contenders, settings)
    results = report(settings, values, skipped, (load_before, os.getloadavg()[0]))
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"json: {args.json}")
    print(_chart.draw(results, args.png))


if __name__ == "__main__":
    main()
