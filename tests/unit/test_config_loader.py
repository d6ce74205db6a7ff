"""The loader never ends in a traceback, and refuses at load what the wire or the kernel
would refuse at every call."""

from __future__ import annotations

import pytest

from execgate.daemon.config import ConfigError, parse_policy, parse_size

SHELL = "tools:\n  sh:\n    type: command\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml", {})
    return info.value.problems


def report(text: str) -> list[str]:
    """The problems as printed: with file, line and column."""
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "test.yaml", {})
    return info.value.report()


def limits(key: str, value: str) -> str:
    return f"sandbox:\n  limits:\n    {key}: {value}\n"


def test_a_list_used_as_a_key_is_an_error() -> None:
    assert "a key must be a plain value" in problems("? [a, b]\n: 1\n")[0]


def test_a_mapping_used_as_a_key_is_an_error() -> None:
    assert "a key must be a plain value" in problems("tools:\n  {a: 1}: 2\n")[0]


def test_a_recursive_alias_is_an_error() -> None:
    assert "recursive alias" in problems("llms: &a [*a]\n")[0]


def test_an_alias_fan_out_is_an_error() -> None:
    """A billion laughs: nine lines that would expand to 10^9 values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    assert "expands to more than" in problems("llms:\n  " + "\n  ".join(lines) + "\n")[0]


def test_deep_nesting_is_an_error() -> None:
    assert "nested" in problems("llms: " + "[" * 5000 + "]" * 5000 + "\n")[0]


def test_an_integer_of_thousands_of_digits_is_an_error() -> None:
    found = report(limits("processes", "9" * 5000))
    assert "integer" in found[0]
    assert found[0].startswith("test.yaml:3:")


def test_an_impossible_date_is_an_error() -> None:
    assert report(SHELL + "    description: 2024-13-45\n")[0].startswith("test.yaml:4:")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400", "'9999999999999999999999h'",
                                   "1" + "0" * 400])
def test_nan_and_infinite_durations_are_refused_with_their_key_path(value: str) -> None:
    found = problems(SHELL + f"    max_execution_time: {value}\n")
    assert len(found) == 1
    assert found[0].startswith("tools.sh.max_execution_time: ")


def test_a_duration_longer_than_a_year_is_refused() -> None:
    found = problems("approvals:\n  timeout: 9000h\n")
    assert found == ["approvals.timeout: a duration must be at most 8760h (a year)"]


@pytest.mark.parametrize(("key", "value"), [
    ("processes", "8589934592"),      # uint32 on the wire; pids.max takes at most 2^22
    ("processes", "4194305"),
    ("open_files", "4294967296"),     # uint32 on the wire
    ("memory", "8EiB"),               # past int64: cgroups and rlimits take no more
    ("file_size", "9223372036854775808"),
    ("address_space", "16EiB"),
    ("tmp_size", "8EiB"),
])
def test_limits_beyond_the_wire_and_the_kernel_are_refused(key: str, value: str) -> None:
    found = problems(limits(key, value))
    assert len(found) == 1
    assert found[0].startswith(f"sandbox.limits.{key}: ")


def test_a_tools_limit_override_is_bounded_too() -> None:
    found = problems(SHELL + "    sandbox:\n      limits: {processes: 8589934592}\n")
    assert found[0].startswith("tools.sh.sandbox.limits.processes: ")


def test_the_largest_limits_the_kernel_takes_load() -> None:
    text = limits("processes", "4194304") + "    memory: 8589934591GiB\n"
    config = parse_policy(text, "t", {}).config
    assert config.sandbox.limits.processes == 4194304


@pytest.mark.parametrize("version", ['"1"', '"99"', "3", '"2.0"'])
def test_a_version_other_than_2_is_refused(version: str) -> None:
    assert problems(f"version: {version}\n") == [
        'version: only "2" is supported (this daemon reads the version 2 policy format)']


def test_version_2_may_be_written_as_a_number() -> None:
    assert parse_policy("version: 2\n", "t", {}).config.version == "2"


def test_a_tool_no_section_defines_is_an_error() -> None:
    found = problems(SHELL + "agents:\n  a:\n    tools: [sh, shel]\n")
    assert found == ["agents.a.tools[1]: no tool named 'shel' is defined under tools; "
                     "did you mean `sh`?"]


def test_the_llm_platform_tools_keep_their_warning() -> None:
    loaded = parse_policy(SHELL + "agents:\n  a:\n    tools: [sh, search, web_request]\n",
                          "t", {})
    assert len(loaded.warnings) == 2
    assert "tools[1]: tool 'search' is not provided by this daemon" in loaded.warnings[0]


@pytest.mark.parametrize(("text", "size"), [(65536, 65536), ("65536", 65536),
                                            ("16MiB", 16 * 1024**2), ("1GB", 10**9),
                                            ("64MiB", 64 * 1024**2), ("1.5GiB", 1536 * 1024**2),
                                            ("16 KiB", 16384), ("4096B", 4096)])
def test_sizes_parse(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("value", [True, 0, "0", -1, "-1MiB", "16XB", "1e3", 1.5, "lots"])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@pytest.mark.parametrize("key", ["server.max_concurrent_runs",
                                 "server.auth.max_failed_attempts",
                                 "server.rate_limiting.burst"])
def test_counts_are_bounded(key: str) -> None:
    *sections, name = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections))
    found = problems(text + f"{'  ' * len(sections)}{name}: {2**64}\n")
    assert found[0].startswith(f"{key}: must be at most 2147483647")


def test_a_uid_past_the_largest_is_refused() -> None:
    assert problems("server:\n  unix_uids: [4294967295]\n")[0].startswith(
        "server.unix_uids[0]: must be at most 4294967294")
