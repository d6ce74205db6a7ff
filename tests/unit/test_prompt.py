"""Approval prompts: what a human reads is what will run."""

from __future__ import annotations

import pytest

from execgate.daemon.policy._prompt import escape


@pytest.mark.parametrize(("text", "shown"), [
    ("plain", "plain"),
    ("clear\x1b[2Kline", "clear\\x1b[2Kline"),
    ("bell\x07", "bell\\x07"),
    ("new\nline", "new\\x0aline"),
    ("rtl\u202eoverride", "rtl\\u202eoverride"),
    ("isolate\u2066x\u2069", "isolate\\u2066x\\u2069"),
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("c1\x9bcontrol", "c1\\x9bcontrol"),
    ("naïve café", "naïve café"),
])
def test_deceiving_characters_are_escaped(text: str, shown: str) -> None:
    assert escape(text) == shown
