"""``execgated verify-audit FILE...``: check an audit file's hash chain.

Exit status: 0 the chain is intact; 1 a record was altered, removed, reordered or truncated
(the first one found is named); 3 intact but for a torn last line (a daemon killed
mid-write); 2 a file cannot be read or the key is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from execgate.daemon.audit_file import verify

EXIT_BROKEN = 1
EXIT_UNREADABLE = 2
EXIT_TORN = 3


def add_command(commands: Any) -> None:
    """Add ``verify-audit`` to execgated's subcommands."""
    cmd = commands.add_parser(
        "verify-audit", help="check audit files' hash chain (rotated files oldest first)")
    cmd.add_argument("files", type=Path, nargs="+", metavar="FILE")
    cmd.add_argument("--hmac-key-env", metavar="VAR",
                     help="environment variable holding the key of an HMAC chain")


def run_command(args: argparse.Namespace) -> int:
    """Verify the files as one chain; print what was found."""
    key = None
    if args.hmac_key_env:
        value = os.environ.get(args.hmac_key_env, "")
        if not value:
            print(f"execgated: ${args.hmac_key_env} is not set", file=sys.stderr)
            return EXIT_UNREADABLE
        key = value.encode()
    try:
        finding = verify(args.files, key)
    except OSError as exc:
        print(f"execgated: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    if finding.intact:
        print(finding.message)
        return 0
    print(finding.message, file=sys.stderr)
    return EXIT_TORN if finding.torn else EXIT_BROKEN
