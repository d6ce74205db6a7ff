"""Redaction: secrets on a command line are replaced before the audit records it.

A rule is a name and a regular expression searched in each argv element. Where the pattern
has a group named ``secret`` only that group is replaced (``--password=[redacted:password]``
keeps the flag readable); else the whole match is. An element that is exactly a secret-taking
flag (``--password``, ``--token`` ...) has the element after it replaced whole.

The caller still runs what it sent: redaction changes the record, never the plan.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

DEFAULT_RULES: Mapping[str, str] = {
    "bearer": r"(?i)\bbearer\s+(?P<secret>[^\s\"']+)",
    "password": r"(?i)^--?(?:password|passwd|pass|token|api[-_]?key|secret|auth)"
                r"[=:](?P<secret>.+)$",
    "aws_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "aws_secret": r"(?i)aws_secret_access_key\s*[=:]\s*(?P<secret>\S+)",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "url_credentials": r"(?i)\b[a-z][a-z0-9+.-]*://(?P<secret>[^/\s@]+)@",
}
"""The rules every policy starts with; ``logger.redact`` adds to them or, with an empty
pattern, turns one off."""

SHORT_PASSWORD = re.compile(r"^-p(?P<secret>.+)$")
SHORT_PASSWORD_COMMANDS = frozenset({"mysql", "mysqldump", "mysqladmin", "mariadb",
                                     "mariadb-dump", "mariadb-admin"})
"""``-p<secret>`` (rule ``short_password``) is a password only to these commands: elsewhere
``-print`` or ``-pthread`` are flags the audit must show."""

SECRET_FLAGS = frozenset({"--password", "--passwd", "--token", "--api-key", "--api_key",
                          "--secret", "--auth", "--bearer"})
"""Flags whose secret is the next argv element (rule ``secret_flag``)."""


class Redactor:
    """Applies named secret patterns to argv elements."""

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        rules = {**DEFAULT_RULES, **(extra or {})}
        self._rules = [(name, re.compile(pattern)) for name, pattern in rules.items() if pattern]

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with each secret replaced by ``[redacted:<rule>]``."""
        out: list[str] = []
        after_flag = False
        mysql = bool(argv) and argv[0].rpartition("/")[2] in SHORT_PASSWORD_COMMANDS
        for element in argv:
            if after_flag:
                out.append("[redacted:secret_flag]")
            elif mysql and SHORT_PASSWORD.match(element):
                out.append(SHORT_PASSWORD.sub(
                    lambda m: _replace(m, "short_password"), element))
            else:
                out.append(self.text(element))
            after_flag = element.lower() in SECRET_FLAGS
        return out

    def text(self, value: str) -> str:
        """``value`` with every rule's matches replaced."""
        for name, pattern in self._rules:
            value = pattern.sub(functools.partial(_replace, rule=name), value)
        return value


def _replace(match: re.Match[str], rule: str) -> str:
    marker = f"[redacted:{rule}]"
    if "secret" not in match.re.groupindex or match.group("secret") is None:
        return marker
    start, end = match.span("secret")
    whole = match.group(0)
    offset = match.start()
    return whole[:start - offset] + marker + whole[end - offset:]
