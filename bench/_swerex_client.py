"""SWE-ReX's side of ``python -m bench``, run with the python of SWE-ReX's own venv (never
imported by the harness, which needs neither swerex nor its dependencies).

    python _swerex_client.py PORT TOKEN MEASUREMENT [ARG]

MEASUREMENT is ``true CALLS WARMUP``, ``flood PATH`` (a file to print), ``concurrent COUNT`` or
``first-byte``; the result is one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from swerex.runtime.abstract import Command
from swerex.runtime.remote import RemoteRuntime

STREAMING = ["sh", "-c", "echo first; sleep 1; echo last"]


async def true_round_trips(runtime: RemoteRuntime, calls: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        await runtime.execute(Command(command=["true"]))
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        await runtime.execute(Command(command=["true"]))
        samples.append(time.perf_counter() - t)
    return {"samples": samples}


async def flood(runtime: RemoteRuntime, path: str) -> dict[str, Any]:
    await runtime.execute(Command(command=["true"]))
    t = time.perf_counter()
    response = await runtime.execute(Command(command=["cat", path]))
    return {"seconds": time.perf_counter() - t, "bytes": len(response.stdout.encode())}


async def concurrent(runtime: RemoteRuntime, count: int) -> dict[str, Any]:
    await runtime.execute(Command(command=["true"]))
    t = time.perf_counter()
    responses = await asyncio.gather(*(runtime.execute(Command(command=["sleep", "0.5"]))
                                       for _ in range(count)))
    elapsed = time.perf_counter() - t
    assert all(r.exit_code == 0 for r in responses)
    return {"seconds": elapsed}


async def first_byte(runtime: RemoteRuntime) -> dict[str, Any]:
    # execute() answers once the command has ended: its first byte comes with its last.
    await runtime.execute(Command(command=["true"]))
    t = time.perf_counter()
    response = await runtime.execute(Command(command=STREAMING))
    assert response.stdout.startswith("first")
    return {"seconds": time.perf_counter() - t}


async def main(port: int, token: str, measurement: str, args: list[str]) -> dict[str, Any]:
    runtime = RemoteRuntime(host="http://127.0.0.1", port=port, auth_token=token)
    if measurement == "true":
        return await true_round_trips(runtime, *map(int, args))
    if measurement == "flood":
        return await flood(runtime, args[0])
    if measurement == "concurrent":
        return await concurrent(runtime, *map(int, args))
    return await first_byte(runtime)


if __name__ == "__main__":
    port, token, measurement, *rest = sys.argv[1:]
    result = asyncio.run(main(int(port), token, measurement, rest))
    print(json.dumps(result))
