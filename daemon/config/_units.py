"""Durations, sizes and counts in a policy, bounded by what the wire and the kernel take.

A value past these bounds would load and then fail at every call (a protobuf field that
cannot hold it, a cgroup or rlimit write the kernel refuses), so it is refused at load,
with its key path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ByteSize,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

MAX_DURATION = 365 * 24 * 3600.0
"""A year: every timer, deadline and expiry time the daemon computes stays representable."""
MAX_BYTES = 2**63 - 1
"""rlimits and cgroup limits are signed 64-bit in the kernel (and in Python's resource)."""
MAX_PROCESSES = 4_194_304
"""PID_MAX_LIMIT: pids.max refuses more (the wire's uint32 would take more)."""
MAX_OPEN_FILES = 2_147_483_584
"""The highest fs.nr_open a 64-bit kernel allows; RLIMIT_NOFILE cannot exceed fs.nr_open."""
MAX_UID = 2**32 - 2
"""(uid_t)-1 means "no change" to the kernel, so it names nobody."""
MAX_COUNT = 2**31 - 1
"""Counts (concurrent runs, requests a minute, burst): far past any host's capacity."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTE_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``2m``, ``1m30s``, ``500ms``, ``1h`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 30s or 2m, not a boolean")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            text = value.strip()
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration such as 30s, 2m, 1m30s or 500ms")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        else:
            raise ValueError("a duration such as 30s or 2m")
    except OverflowError:
        seconds = math.inf  # an integer too large for a float
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    if seconds > MAX_DURATION:
        raise ValueError("a duration must be at most 8760h (a year)")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``65536``, ``16MiB``, ``1GB`` or ``1.5GiB`` (pydantic's ByteSize units)."""
    if isinstance(value, bool):
        raise ValueError("a size such as 16MiB, not a boolean")
    try:
        size = int(_BYTE_SIZE.validate_python(value))
    except ValidationError:
        raise ValueError(f"{value!r} is not a size such as 65536, 16MiB or 1GB") from None
    if size <= 0:
        raise ValueError("a size must be greater than zero")
    if size > MAX_BYTES:
        raise ValueError(f"a size must be at most {MAX_BYTES} bytes (8EiB less one byte): "
                         "the kernel's limits take no more")
    return size


def _at_most(limit: int, why: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value > limit:
            raise ValueError(f"must be at most {limit} ({why})")
        return value
    return check


# The schema shows what users write ("30s", "64MiB"); a plain number is accepted too.
_DURATION_SCHEMA = WithJsonSchema({"anyOf": [
    {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|s|m|h))+\s*$",
     "examples": ["30s", "2m", "1m30s", "500ms", "1h"]},
    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION}]})
_SIZE_SCHEMA = WithJsonSchema({"anyOf": [
    {"type": "string",
     "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtTpPeE][iI]?[bB]|[bB])?\s*$",
     "examples": ["65536", "16MiB", "1GB", "1.5GiB"]},
    {"type": "integer", "exclusiveMinimum": 0, "maximum": MAX_BYTES}]})

Duration = Annotated[float, BeforeValidator(parse_duration), _DURATION_SCHEMA]
"""Seconds, from a duration such as ``30s``."""
Size = Annotated[int, BeforeValidator(parse_size), _SIZE_SCHEMA]
"""Bytes, from a size such as ``16MiB``."""
Processes = Annotated[int, Field(gt=0),
                      AfterValidator(_at_most(MAX_PROCESSES, "pids.max takes no more"))]
"""Processes and threads of a job."""
OpenFiles = Annotated[int, Field(ge=16),
                      AfterValidator(_at_most(MAX_OPEN_FILES, "the kernel's fs.nr_open ceiling"))]
"""RLIMIT_NOFILE; at least 16: the job's init, which holds the limit it gives its jobs,
keeps a dozen open (its socket, the job's pipes, the jail)."""
Uid = Annotated[int, Field(ge=0), AfterValidator(_at_most(MAX_UID, "the largest user id"))]
"""A user id."""
Count = Annotated[int, Field(gt=0), AfterValidator(_at_most(MAX_COUNT, "2^31 - 1"))]
"""A positive count."""
