"""The command's environment: built from an allowlist, never inherited from the daemon.

A request may add variables, but never ones that change which program runs or what it loads
(PATH, loader and interpreter hooks, shell start-up files, git and npm configuration).
This is defence in depth; the kernel sandbox is the boundary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from execgate.daemon.model import Denial, DenialKind

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DENIED_NAMES = frozenset({
    "PATH", "HOME", "SHELL", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4",
    "PROMPT_COMMAND", "CDPATH", "GLOBIGNORE", "TMPDIR", "HOSTALIASES", "LOCALDOMAIN",
    "RES_OPTIONS", "NLSPATH", "GCONV_PATH", "GLIBC_TUNABLES", "PERLLIB", "PERL5LIB",
    "PERL5OPT", "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS", "CLASSPATH", "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
    "EDITOR", "VISUAL", "PAGER", "SSH_ASKPASS", "SUDO_ASKPASS", "ZDOTDIR", "BROWSER",
})
"""Variable names (compared upper-cased) a request may never set."""

DENIED_PREFIXES = ("LD_", "DYLD_", "GIT_", "PYTHON", "NPM_CONFIG_", "BASH_FUNC_", "MALLOC_",
                   "LUA_", "XDG_", "PERL", "RUBY")
"""Name prefixes (compared upper-cased) a request may never set."""

MAX_ENV_BYTES = 128 * 1024


def check_env(env: Mapping[str, str], rule: str) -> None:
    """Refuse a variable that is malformed or on the deny list, naming it and the rule."""
    total = 0
    for name, value in env.items():
        if not _NAME.fullmatch(name):
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"environment variable name {name!r} is not a valid name "
                         "(letters, digits and _; no '=', no NUL)")
        if "\0" in value:
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"environment variable {name} contains a NUL byte")
        upper = name.upper()
        if upper in DENIED_NAMES or upper.startswith(DENIED_PREFIXES):
            raise Denial(DenialKind.POLICY_DENIED,
                         f"environment variable {name} may not be set by a request: it "
                         "changes which program runs or what it loads", rule)
        total += len(name) + len(value.encode()) + 2
    if total > MAX_ENV_BYTES:
        raise Denial(DenialKind.INVALID_ARGUMENT,
                     f"environment is {total} bytes; the limit is {MAX_ENV_BYTES}")


def command_env(path: str, home: Path, tool_env: Mapping[str, str],
                request_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a command: fixed base, then the tool's, then the request's."""
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "PWD": str(home)}
    env.update(tool_env)
    env.update(request_env)
    return env
