"""What this host supports, as the helper found it, and which layers a confinement gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from execgate.daemon.model import Confinement, Denial, DenialKind


@dataclass(frozen=True)
class HostSupport:
    """Each layer: None when usable, else why not."""

    root: bool
    landlock_abi: int
    landlock: str | None
    namespaces: str | None
    cgroup: str | None
    user_namespace: str | None
    view: str | None
    cgroup_how: str = ""
    """Which cgroup version the job cgroups use and why (empty when unavailable)."""

    @classmethod
    def from_probe(cls, probe: dict[str, Any]) -> HostSupport:
        """From the helper's ``ready`` message."""
        return cls(root=probe["root"], landlock_abi=probe["landlock_abi"],
                   landlock=probe["landlock"], namespaces=probe["namespaces"],
                   cgroup=probe["cgroup"].get("error"), user_namespace=probe["user_namespace"],
                   view=probe["view"], cgroup_how=_cgroup_how(probe["cgroup"]))

    def report(self) -> list[tuple[str, str | None]]:
        """(layer, None or why it is unavailable), for ``doctor`` and the startup log."""
        return [(f"filesystem (Landlock ABI {self.landlock_abi})", self.landlock),
                ("namespaces (pid, mount, network)", self.namespaces),
                ("view (a root of the job's own: no host sockets, /run, /home)", self.view),
                (f"cgroup (pids, memory){self.cgroup_how}", self.cgroup)]


def _cgroup_how(cgroup: dict[str, Any]) -> str:
    if "version" not in cgroup:
        return ""
    return f" with cgroup v{cgroup['version']}: {cgroup['why']}"


@dataclass(frozen=True)
class Layers:
    """The layers one job gets."""

    landlock: bool
    namespaces: bool
    cgroup: bool
    view: bool
    """The job sees a root of its own, not the host's."""


def layers_for(tool: str, confinement: Confinement, host: HostSupport) -> Layers:
    """Which layers apply: a required one the host lacks refuses the call (fail closed)."""

    def use(layer: str, mode: str, missing: str | None, needed: bool = True) -> bool:
        if mode == "off" or not needed:
            return False
        if missing is None:
            return True
        if mode == "required":
            raise Denial(DenialKind.SANDBOX_UNAVAILABLE,
                         f"the sandbox layer {layer!r} is required but unavailable on this "
                         f"host: {missing}", f"tools.{tool}.sandbox.{layer}")
        return False

    landlock = use("filesystem", confinement.filesystem, host.landlock)
    namespaces = use("namespaces", confinement.namespaces, host.namespaces)
    view = use("view", confinement.view,
               host.view if namespaces else "needs the namespaces layer, which is off or "
               "unavailable")
    cgroup = use("cgroup", confinement.cgroup, host.cgroup,
                 needed=confinement.processes is not None or confinement.memory is not None)
    if not confinement.network and not namespaces and not (landlock and host.landlock_abi >= 4):
        raise Denial(DenialKind.SANDBOX_UNAVAILABLE,
                     "network: false cannot be enforced: neither a network namespace nor "
                     "Landlock TCP rules are available", f"tools.{tool}.sandbox.network")
    return Layers(landlock=landlock, namespaces=namespaces, cgroup=cgroup, view=view)
