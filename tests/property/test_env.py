"""The env filter: nothing that changes which program runs or what it loads gets through."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from execgate.daemon.model import DenialKind
from execgate.daemon.policy._env import (
    DENIED_NAMES,
    DENIED_PREFIXES,
    check_env,
    command_env,
)
from tests.property._support import refusal

RULE = "tools.shell.env"
_HOOKS = st.sampled_from(sorted(DENIED_NAMES) + [p + "X" for p in DENIED_PREFIXES]
                         + ["LD_PRELOAD", "PYTHONPATH", "BASH_FUNC_ls%%", "GIT_SSH_COMMAND"])


def _case(text: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if f else c for c, f in zip(text, flips + [False] * len(text),
                                                              strict=False))


_NAMES = st.one_of(st.text(max_size=20),
                   st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
                   st.builds(_case, _HOOKS, st.lists(st.booleans(), max_size=30)))


@given(st.dictionaries(_NAMES, st.text(max_size=50), max_size=6))
def test_an_accepted_environment_sets_no_denied_or_malformed_name(env: dict[str, str]) -> None:
    denial = refusal(lambda: check_env(env, RULE))
    if denial is not None:
        assert denial.kind in (DenialKind.INVALID_ARGUMENT, DenialKind.POLICY_DENIED)
        assert denial.kind is DenialKind.INVALID_ARGUMENT or denial.rule == RULE
        return
    for name, value in env.items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
        assert name.upper() not in DENIED_NAMES
        assert not name.upper().startswith(DENIED_PREFIXES)
        assert "\0" not in value


@given(_HOOKS, st.lists(st.booleans(), max_size=30), st.text(max_size=20))
def test_a_loader_or_interpreter_hook_in_any_case_is_a_policy_denial(
        hook: str, flips: list[bool], value: str) -> None:
    name = _case(hook, flips)
    denial = refusal(lambda: check_env({name: value}, RULE))
    assert denial is not None, f"{name!r} was accepted"
    assert denial.kind in (DenialKind.POLICY_DENIED, DenialKind.INVALID_ARGUMENT)


@given(st.dictionaries(_NAMES, st.text(max_size=50), max_size=6))
def test_an_accepted_request_never_changes_path_or_home(env: dict[str, str]) -> None:
    if refusal(lambda: check_env(env, RULE)) is not None:
        return
    built = command_env("/usr/bin:/bin", Path("/work"), {}, env)
    assert built["PATH"] == "/usr/bin:/bin"
    assert built["HOME"] == "/work"
