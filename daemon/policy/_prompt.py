"""Whether a plan needs a human, and the question put to them.

What a human reads must be what will run: every substituted value is escaped, so control
characters, ANSI escape sequences, bidirectional overrides and zero-width characters show as
``\\x1b``, ``\\u202e`` ... instead of rewriting the line the human sees.
"""

from __future__ import annotations

import shlex
import string
import unicodedata

from execgate.daemon.config import ToolConfig
from execgate.daemon.model import CommandPlan, Plan

_DECEIVING = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
"""Unicode categories shown escaped: controls; format characters (every bidi control and
zero-width character, soft hyphens, the invisible tag characters that smuggle text past a
reader); surrogates; private-use and unassigned code points, which a terminal draws as
nothing or as it likes; line, paragraph and space separators other than the plain space."""


def escape(text: str) -> str:
    """``text`` with everything that could deceive a reader made visible."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == " " or unicodedata.category(ch) not in _DECEIVING:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _default(plan: Plan) -> str:
    if isinstance(plan, CommandPlan):
        return "Run {command} in {cwd}?"
    return "Allow " + plan.handler.replace("_", " ") + " on {path}?"


def approval_prompt(tool: ToolConfig, plan: Plan) -> str | None:
    """The rendered prompt when ``plan`` needs approval, else None."""
    needed = tool.require_approval
    if not needed and isinstance(plan, CommandPlan):
        needed = any(tuple(plan.argv[:len(prefix.split())]) == tuple(prefix.split())
                     for prefix in tool.require_approval_for)
    if not needed:
        return None
    values = {"tool": plan.tool, "agent": plan.agent}
    if isinstance(plan, CommandPlan):
        values.update(command=shlex.join(plan.argv), argv=shlex.join(plan.argv),
                      cwd=str(plan.cwd))
    else:
        values.update(plan.arguments, cwd=str(plan.jail), file=plan.arguments.get("path", ""),
                      command=plan.handler, argv="")
    template = tool.approval_prompt or _default(plan)
    # A placeholder the call did not give (an optional argument) reads as empty.
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    return template.format_map({f: escape(values.get(f, "")) for f in fields})
