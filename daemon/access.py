"""Access: which agents a principal may see and use (the guide's visibility levels).

- public: listed to everyone; usable by anyone who got past authentication.
- internal: listed to and usable by authenticated callers only, whatever require_auth says.
- private: never listed and never callable over the network.

An unknown agent and a hidden one get the same answer, so discovery never leaks a name.
"""

from __future__ import annotations

from execgate.daemon.config import AgentConfig, PolicyConfig
from execgate.daemon.model import Denial, DenialKind, Principal


class Access:
    """Visibility decisions for one policy."""

    def __init__(self, config: PolicyConfig) -> None:
        self._agents = config.agents

    def visible(self, principal: Principal) -> list[tuple[str, AgentConfig]]:
        """The agents ``principal`` may see and use, in policy order."""
        return [(name, agent) for name, agent in self._agents.items()
                if agent.visibility == "public"
                or (agent.visibility == "internal" and principal.authenticated)]

    def agent_for(self, principal: Principal, name: str) -> tuple[str, AgentConfig]:
        """The agent named ``name`` (or the only one visible, when ``name`` is empty)."""
        visible = dict(self.visible(principal))
        if not name:
            if len(visible) == 1:
                return next(iter(visible.items()))
            raise Denial(DenialKind.INVALID_ARGUMENT,
                         f"name the agent: {len(visible)} are available to you "
                         f"({', '.join(visible) or 'none'})")
        if name not in visible:
            raise Denial(DenialKind.AGENT_NOT_FOUND, f"no agent named {name!r}")
        return name, visible[name]
