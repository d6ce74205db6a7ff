"""The policy step: argv rules, environment rules, path jail, and the decision itself."""

from execgate.daemon.policy._confine import ConfinementError
from execgate.daemon.policy._decide import FUNCTION_ARGUMENTS, Policy
from execgate.daemon.policy._env import DENIED_NAMES, DENIED_PREFIXES, check_env

__all__ = ["DENIED_NAMES", "DENIED_PREFIXES", "FUNCTION_ARGUMENTS", "ConfinementError",
           "Policy", "check_env"]
