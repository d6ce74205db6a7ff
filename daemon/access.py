"""Access: which agents a principal may see and use (the guide's visibility levels).

- public: listed to everyone; usable by anyone who got past authentication.
- internal: listed to and usable by authenticated callers only, whatever require_auth says.
- private: never listed and never callable over the network: only over a unix socket, by a
  uid in ``server.unix_uids`` (the guide's "internal use only").

An unknown agent and a hidden one get the same answer, so discovery never leaks a name.
Beyond the guide, an agent's ``allow`` rules name who may use it, so that several teams'
agents can share one daemon: a caller who can see the agent but matches no rule gets
PERMISSION_DENIED.
"""

from __future__ import annotations

from execgate.daemon.config import AccessRule, AgentConfig, PolicyConfig
from execgate.daemon.model import Denial, DenialKind, Principal


class Access:
    """Visibility decisions for one policy."""

    def __init__(self, config: PolicyConfig) -> None:
        self._agents = config.agents

    def visible(self, principal: Principal) -> list[tuple[str, AgentConfig]]:
        """The agents ``principal`` may see and use, in policy order."""
        return [(name, agent) for name, agent in self._agents.items()
                if agent.visibility == "public"
                or (agent.visibility == "internal" and principal.authenticated)
                or (agent.visibility == "private" and principal.local)]

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
        agent = visible[name]
        if agent.allow is not None and not any(rule_matches(r, principal)
                                               for r in agent.allow):
            raise Denial(DenialKind.PERMISSION_DENIED,
                         f"{principal.subject!r} may not use agent {name!r}",
                         f"agents.{name}.allow")
        return name, agent


def rule_matches(rule: AccessRule, principal: Principal) -> bool:
    """Whether ``principal`` is one the rule names (anonymous callers never are)."""
    if not principal.authenticated:
        return False
    if rule.subject is not None and rule.subject != principal.subject:
        return False
    return all(_claim_has(principal.claims.get(k), v) for k, v in (rule.claim or {}).items())


def _claim_has(claim: object, value: str) -> bool:
    if isinstance(claim, list):
        return value in claim
    if isinstance(claim, str):
        return claim == value or value in claim.split(" ")
    return False
