"""Approval abuse: deceiving the human who approves, or deciding without being entitled.
Each ends in the deception shown escaped, or a refusal, and nothing ran (checked from
outside: the file the command would have made is absent)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator

import pytest

from execgate.client import (
    ApprovalDeniedError,
    ApprovalRequested,
    Client,
    ExecgateError,
    NotFoundError,
    PermissionDeniedError,
)
from tests.conftest import Daemon, start_daemon
from tests.integration.test_approvals import APPROVER_KEY, OTHER_KEY, POLICY


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("approval-abuse"), POLICY)
    yield d
    d.stop()


def _shown(daemon: Daemon, name: str) -> str:
    """The prompt a human is shown for `touch NAME`, which is then denied."""
    prompts: list[str] = []

    def deny(request: ApprovalRequested) -> bool:
        prompts.append(request.prompt)
        return False

    with daemon.client() as c, pytest.raises(ApprovalDeniedError):
        c.run(["touch", name], agent="dev", tool="shell", on_approval=deny)
    assert not (daemon.workspace / name).exists()
    return prompts[0]


def test_ansi_escapes_in_an_argument_are_shown_escaped(daemon: Daemon) -> None:
    """Trail of Bits, "Deceiving users with ANSI terminal codes in MCP" (2025): erase the
    line and write a harmless-looking one over it."""
    prompt = _shown(daemon, "x\x1b[2K\r\x1b[1ARun echo hello?")
    assert "\x1b" not in prompt and "\r" not in prompt
    assert "\\x1b[2K\\x0d" in prompt


def test_a_bidi_override_cannot_reorder_the_command_shown(daemon: Daemon) -> None:
    """Trojan Source, CVE-2021-42574: U+202E shows the rest of the line reversed."""
    prompt = _shown(daemon, "safe\u202etxt.hs")
    assert "\u202e" not in prompt
    assert "\\u202e" in prompt


def test_invisible_tag_characters_are_shown_to_the_approver(daemon: Daemon) -> None:
    """ASCII smuggling (J. Rehberger, Embrace The Red, 2024): Unicode tag characters spell
    hidden text that a reader never sees. Found by the property tests: they passed
    through the prompt unescaped."""
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "rm -rf ~")
    prompt = _shown(daemon, "notes" + hidden)
    assert not any(0xE0000 <= ord(c) <= 0xE007F for c in prompt)
    assert "\\U000e0072" in prompt


def test_a_zero_width_space_cannot_hide_a_second_word(daemon: Daemon) -> None:
    """Zero-width characters joining look-alike words (homograph prompts)."""
    prompt = _shown(daemon, "report\u200b.txt")
    assert "\u200b" not in prompt


def test_a_newline_cannot_fake_a_second_prompt_line(daemon: Daemon) -> None:
    """A newline and a forged question: the approver reads one line, as written."""
    prompt = _shown(daemon, "a\nApprove reading README.md?")
    assert "\n" not in prompt


def test_a_guessed_approval_id_decides_nothing(daemon: Daemon) -> None:
    """Guessing an approval id (128 random bits) to approve a pending call."""
    with Client(daemon.target, token=APPROVER_KEY) as approver:
        for _ in range(20):
            guess = ApprovalRequested(approval_id=secrets.token_hex(16), prompt="",
                                      plan=None, plan_digest="0" * 64,  # type: ignore[arg-type]
                                      requester="", expires_at=0.0)
            with pytest.raises(NotFoundError):
                approver.decide_approval(guess, True)


def _pending(daemon: Daemon, name: str) -> tuple[ApprovalRequested, Iterator[object]]:
    """A call for `touch NAME` left waiting (no answer from its caller) and its request."""
    caller = daemon.client()
    events = caller.stream(["touch", name], agent="dev", tool="shell",
                           on_approval=lambda _: None)
    request = next(events)
    assert isinstance(request, ApprovalRequested)
    return request, events


def test_a_non_approver_cannot_read_a_pending_request(daemon: Daemon) -> None:
    """Reading another caller's request leaks its command and arguments."""
    request, events = _pending(daemon, "unread")
    try:
        with Client(daemon.target, token=OTHER_KEY) as other, pytest.raises(
                (PermissionDeniedError, NotFoundError)):
            other.get_approval(request.approval_id)
    finally:
        events.close()  # type: ignore[attr-defined]
    assert not (daemon.workspace / "unread").exists()


def test_a_decision_for_a_different_plan_digest_runs_nothing(daemon: Daemon) -> None:
    """Bait and switch (a TOCTOU against the human): a decision must name the digest of the
    plan that was shown; one for another digest is refused and the call does not run."""
    request, events = _pending(daemon, "switched")
    try:
        with Client(daemon.target, token=APPROVER_KEY) as approver, pytest.raises(
                ExecgateError):
            approver.decide_approval(dataclasses.replace(request, plan_digest="f" * 64), True)
    finally:
        events.close()  # type: ignore[attr-defined]
    assert not (daemon.workspace / "switched").exists()


def test_a_caller_that_is_not_an_approver_cannot_decide_by_replaying_an_id(
        daemon: Daemon) -> None:
    """Another caller who saw an approval id (in a log, a screenshot) tries to use it."""
    request, events = _pending(daemon, "replayed")
    try:
        with Client(daemon.target, token=OTHER_KEY) as other, pytest.raises(
                (PermissionDeniedError, NotFoundError)):
            other.decide_approval(request, True)
    finally:
        events.close()  # type: ignore[attr-defined]
    assert not (daemon.workspace / "replayed").exists()
