"""Approval prompts: no control, bidi, zero-width or other invisible character survives."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from execgate.daemon.config import ToolConfig
from execgate.daemon.model import CommandPlan
from execgate.daemon.policy._prompt import approval_prompt, escape

_DECEIVING = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Controls, format characters (every bidi control and zero-width character is one),
surrogates, private-use and unassigned code points, line and paragraph separators."""
_ODD = st.characters(categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "Mn"])
_TEXT = st.text(st.one_of(_ODD, st.characters()), max_size=40)


def _survivors(shown: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in shown
            if unicodedata.category(c) in _DECEIVING or (c.isspace() and c != " ")]


@given(_TEXT)
# Found by this test (each survived before): a soft hyphen, invisible tag characters spelling
# a hidden "rm" (ASCII smuggling), an Arabic end-of-ayah mark, a non-breaking space,
# private-use and unassigned code points.
@example("ls\u00ad -l")
@example("echo hi\U000e0072\U000e006d")
@example("\u06dd")
@example("rm\u00a0-rf")
@example("\ue000")
@example("\ud7fc")
def test_no_deceiving_character_survives_escaping(text: str) -> None:
    assert _survivors(escape(text)) == []


@given(st.text(st.characters(categories=["L", "N", "P", "S"]), max_size=40))
def test_visible_text_is_shown_unchanged(text: str) -> None:
    assert escape(text) == text


@given(st.lists(_TEXT, min_size=1, max_size=4), _TEXT)
def test_a_rendered_prompt_shows_no_deceiving_character(argv: list[str], cwd: str) -> None:
    tool = ToolConfig.model_validate({"type": "command", "require_approval": True,
                                      "approval_prompt": "Run {command} in {cwd} for {agent}?"})
    plan = _plan(argv, cwd)
    shown = approval_prompt(tool, plan)
    assert shown is not None
    assert _survivors(shown) == []


def _plan(argv: list[str], cwd: str) -> CommandPlan:
    """A plan as the policy makes one; only argv, cwd and names reach the prompt."""
    unused: Any = None
    return CommandPlan(agent="dev", tool="shell", executable="/usr/bin/true", argv=tuple(argv),
                       cwd=Path("/jail") / cwd, cwd_identity=(0, 0), env={}, limits=unused,
                       stdin=False, jail=Path("/jail"), confinement=unused)
