"""Durations and sizes: every input is a bounded positive number or a ValueError."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from execgate.daemon.config import parse_duration, parse_size
from execgate.daemon.config._units import MAX_BYTES, MAX_DURATION

_ANY = st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none(),
                 st.binary(), st.lists(st.integers(), max_size=3))
_DURATION_TEXT = st.lists(
    st.tuples(st.integers(0, 10**6).map(str) | st.floats(0, 1e6).map(lambda f: f"{f:.3f}"),
              st.sampled_from(["ms", "s", "m", "h", "", "S", "d", " s", "µs"])),
    min_size=0, max_size=4).map(lambda parts: "".join(n + u for n, u in parts))
_SIZE_TEXT = st.tuples(st.integers(0, 2**70).map(str) | st.floats(0, 1e20).map(str),
                       st.sampled_from(["", "B", "KiB", "kb", "MiB", "GB", "TiB", "EiB", "PB",
                                        "XiB", " MiB", "MiB ", "iB"])
                       ).map("".join)


@given(st.one_of(_ANY, _DURATION_TEXT))
def test_a_duration_is_bounded_and_positive_or_a_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return
    assert math.isfinite(seconds)
    assert 0 < seconds <= MAX_DURATION


@given(st.integers(1, int(MAX_DURATION) * 1000))
def test_milliseconds_read_back_as_the_same_duration(ms: int) -> None:
    assert math.isclose(parse_duration(f"{ms}ms"), ms / 1000, rel_tol=1e-12)


@given(st.integers(0, 8759), st.integers(0, 59), st.integers(0, 59))
def test_hours_minutes_and_seconds_add_up(h: int, m: int, s: int) -> None:
    text = f"{h}h{m}m{s}s"
    if h == m == s == 0:
        return
    assert parse_duration(text) == h * 3600 + m * 60 + s


@given(st.one_of(_ANY, _SIZE_TEXT))
def test_a_size_is_bounded_and_positive_or_a_value_error(value: object) -> None:
    try:
        size = parse_size(value)
    except ValueError:
        return
    assert isinstance(size, int)
    assert 0 < size <= MAX_BYTES


@given(st.integers(1, MAX_BYTES // 2**20))
def test_mebibytes_read_back_as_bytes(n: int) -> None:
    assert parse_size(f"{n}MiB") == n * 2**20
    assert parse_size(n * 2**20) == n * 2**20
