"""The argv policy: an accepted argv[0] is an allowlisted name, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from execgate.daemon.config import ToolConfig
from execgate.daemon.model import Denial, DenialKind
from execgate.daemon.policy._command import check_argv, check_command
from tests.property._support import refusal

ALLOWED = ("ls", "cat", "git", "python3", "true", "x-y_z.1")
DENIED = ("rm", "sudo")
TOOL = ToolConfig.model_validate({"type": "command", "allowed_commands": list(ALLOWED),
                                  "denied_commands": list(DENIED), "deny_by_default": True})
LOOKALIKES = {"l": "ｌ\u0131Ӏ1|", "s": "ѕ\u0455ｓ5", "a": "аɑα", "t": "τｔ", "e": "еɛ",
              "c": "сϲ", "g": "ɡ", "p": "рρ", "o": "оο0", "y": "уγ", "r": "г"}
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u034f"]
SPACES = [" ", "\t", "\n", "\r", "\v", "\f", "\u00a0", "\u3000", "\u2009"]


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """An allowlisted name with one change of the kinds used to slip past string checks."""
    name = draw(st.sampled_from(ALLOWED + DENIED))
    how = draw(st.sampled_from(["case", "lookalike", "invisible", "space", "nul", "path",
                                "suffix", "prefix"]))
    at = draw(st.integers(0, len(name)))
    if how == "case":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))
    if how == "lookalike":
        i = draw(st.sampled_from([i for i, c in enumerate(name) if c in LOOKALIKES] or [0]))
        if name[i] not in LOOKALIKES:
            return name + "\u0301"
        return name[:i] + draw(st.sampled_from(LOOKALIKES[name[i]])) + name[i + 1:]
    if how in ("invisible", "space", "nul"):
        extra = {"invisible": INVISIBLE, "space": SPACES, "nul": ["\0"]}[how]
        return name[:at] + draw(st.sampled_from(extra)) + name[at:]
    if how == "path":
        return draw(st.sampled_from(["/bin/", "/usr/bin/", "./", "../", "bin/", "//", "~/",
                                     "/proc/self/root/usr/bin/"])) + name
    if how == "suffix":
        return name + draw(st.sampled_from([".exe", "/", "/.", "*", "?", ";", "&&id", " -c"]))
    return draw(st.sampled_from(["-", "--", "\\", "$", "'", '"', "*", "env "])) + name


@given(st.one_of(near_misses(), st.text(max_size=40), st.sampled_from(ALLOWED)))
def test_an_accepted_command_is_an_allowlisted_name_byte_for_byte(name: str) -> None:
    denial = refusal(lambda: check_command(name, "shell", TOOL))
    if denial is None:
        assert name.encode() in {a.encode() for a in ALLOWED}
    else:
        assert denial.kind is DenialKind.POLICY_DENIED
        assert denial.rule.startswith("tools.shell.")


@given(near_misses().filter(lambda name: name not in ALLOWED))
def test_look_alikes_case_whitespace_nul_and_paths_are_refused(name: str) -> None:
    with pytest.raises(Denial) as refused:
        check_command(name, "shell", TOOL)
    assert refused.value.rule in ("tools.shell.allowed_commands", "tools.shell.denied_commands",
                                  "tools.shell.deny_by_default")


@given(st.lists(st.text(max_size=300), max_size=50))
def test_check_argv_accepts_or_refuses_with_an_invalid_argument(argv: list[str]) -> None:
    denial = refusal(lambda: check_argv(argv))
    if denial is None:
        assert argv
        assert not any("\0" in arg for arg in argv)
    else:
        assert denial.kind is DenialKind.INVALID_ARGUMENT
