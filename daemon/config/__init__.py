"""Policy files: schema, loading, environment expansion and the embedded default."""

from execgate.daemon.config._default import DEFAULT_POLICY, DEFAULT_TARGET
from execgate.daemon.config._jsonschema import SCHEMA_FILE, policy_schema, policy_schema_text
from execgate.daemon.config._load import (
    ConfigError,
    LoadedPolicy,
    expansion_env,
    load_policy,
    parse_policy,
    tracing_installed,
    unenforced,
)
from execgate.daemon.config._marks import KeyMarks, Mark
from execgate.daemon.config._schema import (
    FUNCTION_HANDLERS,
    AccessRule,
    AgentConfig,
    ApiKey,
    ApprovalsConfig,
    AuditFileConfig,
    AuthConfig,
    ClusterConfig,
    LoggerConfig,
    ObservabilityConfig,
    PolicyConfig,
    RateLimitConfig,
    RunsConfig,
    ServerConfig,
    TlsConfig,
    ToolConfig,
)
from execgate.daemon.config._units import parse_duration, parse_size

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_TARGET",
    "FUNCTION_HANDLERS",
    "SCHEMA_FILE",
    "AccessRule",
    "AgentConfig",
    "ApprovalsConfig",
    "ApiKey",
    "AuditFileConfig",
    "AuthConfig",
    "ClusterConfig",
    "ConfigError",
    "KeyMarks",
    "LoadedPolicy",
    "LoggerConfig",
    "Mark",
    "ObservabilityConfig",
    "PolicyConfig",
    "RateLimitConfig",
    "RunsConfig",
    "ServerConfig",
    "TlsConfig",
    "ToolConfig",
    "expansion_env",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "parse_size",
    "policy_schema",
    "policy_schema_text",
    "tracing_installed",
    "unenforced",
]
