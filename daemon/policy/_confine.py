"""A tool's sandbox settings, resolved once at load into a Confinement."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from execgate.daemon.config import PolicyConfig
from execgate.daemon.model import Confinement


class ConfinementError(ValueError):
    """A sandbox setting that cannot be honoured on this host, e.g. an unknown run_as user."""


def resolve(config: PolicyConfig, tool: str, jail: Path) -> Confinement:
    """The confinement of ``tool``; its jail and the private /tmp are always writable."""
    sandbox = config.sandbox_for(tool)
    uid = gid = None
    user = (sandbox.run_as or "nobody") if os.geteuid() == 0 else _own_user()
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfinementError(f"tools.{tool}.sandbox.run_as: no user named {user!r} on "
                                   "this host") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    elif sandbox.run_as is not None and sandbox.run_as != user:
        raise ConfinementError(f"tools.{tool}.sandbox.run_as: {sandbox.run_as!r} needs the "
                               f"daemon to run as root; it runs as {user!r}")
    limits = sandbox.limits
    return Confinement(
        filesystem=sandbox.filesystem, namespaces=sandbox.namespaces, cgroup=sandbox.cgroup,
        view=sandbox.view, unix_sockets=tuple(sandbox.unix_sockets), network=sandbox.network,
        uid=uid, gid=gid, user=user,
        read_paths=tuple(sandbox.read_paths + sandbox.extra_read_paths),
        write_paths=(str(jail), *sandbox.write_paths, "/dev/null", "/dev/full"),
        cpu_time=limits.cpu_time, file_size=limits.file_size, open_files=limits.open_files,
        address_space=limits.address_space, processes=limits.processes, memory=limits.memory,
        tmp_size=limits.tmp_size)


def _own_user() -> str:
    """The daemon's user name, or ``uid:N`` where the uid has no passwd entry (an arbitrary
    container uid)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid:{os.geteuid()}"
