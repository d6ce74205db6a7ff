"""The policy file's schema: every key the daemon understands, and nothing else.

An unknown key is an error (a typo in a security policy must never be silently ignored).
Keys that only mean something to an LLM platform are accepted as ``Any`` and warned about by
the loader; keys of features not enforced yet parse here and are reported by ``unenforced``.
"""

from __future__ import annotations

import re
import socket
import string
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from execgate.daemon.config._units import Count, Duration, OpenFiles, Processes, Size, Uid
from execgate.daemon.sandbox._paths import DEFAULT_READ_PATHS
from execgate.daemon.tools._registry import FUNCTION_TOOLS

FUNCTION_HANDLERS = tuple(FUNCTION_TOOLS)
"""The built-in function tools this daemon provides."""
PROMPT_FIELDS = frozenset({"command", "argv", "cwd", "tool", "agent"})
"""Placeholders every approval prompt may use."""
PROMPT_ARGUMENTS = {h: t.prompt_fields for h, t in FUNCTION_TOOLS.items()}
"""Function tools' arguments, by name, for their prompts (``file`` is ``path``)."""


class _Strict(BaseModel):
    # Field docstrings are the JSON Schema's descriptions (``execgated schema``).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _mark_ignored(schema: dict[str, Any]) -> None:
    """Marks, in the JSON Schema, a key an LLM platform reads: accepted, warned about, unused."""
    schema["x-execgate-ignored"] = True


def _ignored(what: str) -> Any:
    return Field(default=None, description=f"Ignored by execgated, accepted with a warning: "
                 f"{what}", json_schema_extra=_mark_ignored)


def _layer(value: object) -> object:
    # YAML reads an unquoted `off` as false: accept what the author meant.
    if isinstance(value, bool):
        return "required" if value else "off"
    return value


Layer = Annotated[Literal["required", "optional", "off"], BeforeValidator(_layer),
                  WithJsonSchema({"anyOf": [{"enum": ["required", "optional", "off"]},
                                            {"type": "boolean"}]})]


def _absolute(value: object) -> object:
    if isinstance(value, str) and not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return value

class SandboxLimits(_Strict):
    """Resource bounds of one job. ``null`` turns a bound off."""

    cpu_time: Duration | None = 600.0
    """RLIMIT_CPU: CPU seconds before the kernel kills the command."""
    file_size: Size | None = 1024**3
    """RLIMIT_FSIZE: the largest file the command may write."""
    open_files: OpenFiles | None = 1024
    """RLIMIT_NOFILE."""
    address_space: Size | None = None
    """RLIMIT_AS: off by default, since it breaks Go and the JVM; use memory instead."""
    processes: Processes | None = 256
    """Processes and threads of the job at once (a per-job pids cgroup)."""
    memory: Size | None = 2 * 1024**3
    """Memory of the whole job (a per-job memory cgroup); past it the kernel kills."""
    tmp_size: Size = 256 * 1024**2
    """Size of the job's private /tmp (a tmpfs that disappears with the job)."""


class SandboxLimitsOverride(_Strict):
    """A tool's changes to the policy-wide limits: only the keys given change."""

    cpu_time: Duration | None = None
    """RLIMIT_CPU for this tool (``null``: none)."""
    file_size: Size | None = None
    """RLIMIT_FSIZE for this tool."""
    open_files: OpenFiles | None = None
    """RLIMIT_NOFILE for this tool."""
    address_space: Size | None = None
    """RLIMIT_AS for this tool."""
    processes: Processes | None = None
    """Processes and threads of one job of this tool."""
    memory: Size | None = None
    """Memory of one job of this tool."""
    tmp_size: Size | None = None
    """Size of the private /tmp of this tool's jobs."""


class SandboxConfig(_Strict):
    """Kernel confinement of commands. Each layer is ``required`` (a call is refused when the
    host lacks it), ``optional`` (skipped with a warning at startup) or ``off``."""

    filesystem: Layer = "required"
    """Landlock: reads of system paths, writes only in the jail and the private /tmp."""
    namespaces: Layer = "required"
    """Own pid and mount namespaces: a private /proc and /tmp, and no process outlives
    the job."""
    cgroup: Layer = "required"
    """Per-job pids and memory cgroups (limits.processes and limits.memory)."""
    view: Layer = "required"
    """A root of the job's own, entered with pivot_root: only read_paths, write_paths, the
    jail, a private /tmp, a minimal /dev and the job's /proc exist there. Keeps host unix
    sockets (which Landlock does not govern) and the daemon's own socket out of reach."""
    unix_sockets: list[Annotated[str, BeforeValidator(_absolute)]] = Field(default_factory=list)
    """Host unix sockets the job may connect to (bound into its view), e.g.
    ``/run/postgresql/.s.PGSQL.5432``."""
    network: bool = False
    """false: an empty network namespace (only a down loopback) and Landlock TCP denial."""
    run_as: str | None = None
    """User that commands run as when the daemon is root; default ``nobody``. ``root`` must
    be written out to run commands as root."""
    read_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_READ_PATHS))
    """Readable (and executable) paths besides the jail."""
    extra_read_paths: list[str] = Field(default_factory=list)
    """Added to read_paths, so that a tool can extend the defaults without restating them."""
    write_paths: list[str] = Field(default_factory=list)
    """Writable paths besides the jail and the private /tmp."""
    limits: SandboxLimits = SandboxLimits()
    """Resource bounds of every job (a tool may change some)."""


class SandboxOverride(_Strict):
    """A tool's changes to the policy-wide ``sandbox``: only the keys given change."""

    filesystem: Layer | None = None
    """This tool's change to sandbox.filesystem."""
    namespaces: Layer | None = None
    """This tool's change to sandbox.namespaces."""
    cgroup: Layer | None = None
    """This tool's change to sandbox.cgroup."""
    view: Layer | None = None
    """This tool's change to sandbox.view."""
    unix_sockets: list[Annotated[str, BeforeValidator(_absolute)]] | None = None
    """This tool's change to sandbox.unix_sockets (replaces the list)."""
    network: bool | None = None
    """This tool's change to sandbox.network."""
    run_as: str | None = None
    """This tool's change to sandbox.run_as."""
    read_paths: list[str] | None = None
    """This tool's change to sandbox.read_paths (replaces the list)."""
    extra_read_paths: list[str] | None = None
    """This tool's change to sandbox.extra_read_paths (replaces the list)."""
    write_paths: list[str] | None = None
    """This tool's change to sandbox.write_paths (replaces the list)."""
    limits: SandboxLimitsOverride | None = None
    """This tool's change to sandbox.limits: only the limits given change."""

    def apply(self, base: SandboxConfig) -> SandboxConfig:
        """``base`` with this override's keys replaced."""
        changes: dict[str, Any] = {k: getattr(self, k) for k in self.model_fields_set
                                   if k != "limits"}
        if self.limits is not None:
            changes["limits"] = base.limits.model_copy(update={
                k: getattr(self.limits, k) for k in self.limits.model_fields_set})
        return base.model_copy(update=changes)


class ToolConfig(_Strict):
    """One tool: a command tool (argv) or a built-in function tool (named arguments)."""

    type: Literal["command", "function"]
    """``command`` (takes argv) or ``function`` (a built-in handler taking named arguments)."""
    handler: str | None = None
    """Function tools: the built-in handler; defaults to the tool's name."""
    description: str = ""
    """What the tool is for, shown to callers by ListAgents."""
    working_directory: str = "./workspace"
    """The jail: cwd and every path the tool touches must resolve inside it."""
    max_execution_time: Duration = 60.0
    """The longest a call may run (a request may ask for less), e.g. ``30s``."""
    allowed_commands: list[str] = Field(default_factory=list)
    """Command tools: the bare names argv[0] may be (matched exactly)."""
    denied_commands: list[str] = Field(default_factory=list)
    """Command tools: names refused even when allowed; checked first."""
    deny_by_default: bool = True
    """Fail closed: a command not in allowed_commands is refused unless this is false."""
    require_approval: bool = False
    """Every call of this tool waits for a human decision."""
    require_approval_for: list[str] = Field(default_factory=list)
    """Command tools: calls whose argv starts with one of these (``git push``, ``rm``) wait
    for a human, inside an otherwise approval-free tool."""
    approval_prompt: str | None = None
    """What the human is asked; ``{command}``, ``{argv}``, ``{cwd}``, ``{tool}``, ``{agent}``,
    and for function tools ``{path}``/``{file}`` and the call's other arguments."""
    max_output_bytes: Size = 64 * 1024**2
    """stdout and stderr together; past it the run is stopped with reason OUTPUT_LIMIT."""
    max_file_bytes: Size = 16 * 1024**2
    """Function tools: the largest file read_file returns or write_file writes."""
    env: dict[str, str] = Field(default_factory=dict)
    """Fixed environment variables for commands, checked like a request's."""
    kill_grace: Duration = 2.0
    """Seconds between SIGTERM and SIGKILL when a run is stopped."""
    idle_timeout: Duration | None = None
    """Command tools: a run that writes nothing for this long is stopped with reason
    IDLE_TIMEOUT (a hung prompt, a stuck network read); unset means no bound."""
    sandbox: SandboxOverride | None = None
    """This tool's changes to the policy-wide sandbox (command tools)."""


class AccessRule(_Strict):
    """Who may use an agent: a rule matches when every key it gives matches."""

    subject: str | None = None
    """A principal's subject: an API key's name, a JWT's sub, a certificate's identity, or
    ``uid:N`` for a unix socket peer."""
    claim: dict[str, str] | None = None
    """JWT claims: a list claim must contain the value, a space-separated one (``scope``)
    must contain it as a word, any other must equal it."""

    @model_validator(mode="after")
    def _not_empty(self) -> AccessRule:
        if self.subject is None and not self.claim:
            raise ValueError("an access rule needs subject or claim")
        return self


class AgentConfig(_Strict):
    """An agent: who sees it, and which tools it may call."""

    visibility: Literal["public", "internal", "private"] = "public"
    """``public``: anyone past authentication; ``internal``: authenticated callers; ``private``:
    unix socket callers only."""
    tools: list[str] = Field(default_factory=list)
    """The tools (names under ``tools``) this agent may call."""
    allow: list[AccessRule] | None = None
    """Beyond the guide: only principals matching one of these rules may use the agent
    (PERMISSION_DENIED otherwise). Unset: anyone visibility admits."""
    description: str = ""
    """What the agent is for, shown to callers by ListAgents."""
    # Meaningful only to an LLM platform: accepted, warned about, never used.
    llm: Any = _ignored("the model an LLM platform gives this agent.")
    instruction: Any = _ignored("an LLM platform's system prompt for this agent.")
    document_stores: Any = _ignored("an LLM platform's retrieval sources for this agent.")


class ApiKey(_Strict):
    """A named API key, so that the audit log can name the caller without the key.

    Give ``key`` (usually ``${VAR}``) or ``sha256`` (its digest, from
    ``execgated hash-key``), so that the key itself is nowhere on the host."""

    name: str
    """The name the audit log records for calls with this key."""
    key: str | None = None
    """The key itself; write ``${VAR}`` to take it from the environment."""
    sha256: str | None = None
    """The key's SHA-256 digest in hex (``execgated hash-key``), instead of the key."""

    @model_validator(mode="after")
    def _one_of_key_or_digest(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"api key {self.name!r}: give exactly one of key and sha256")
        if self.key is not None and not self.key:
            raise ValueError(f"api key {self.name!r} is empty")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"api key {self.name!r}: sha256 must be 64 lowercase hex digits")
        return self


_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


def _written_as(data: dict[str, Any], key: str, value: bool) -> bool:
    """Whether ``key`` is written in ``data`` with a value pydantic reads as ``value``."""
    try:
        return key in data and _BOOL.validate_python(data[key]) is value
    except ValueError:
        return False  # not a boolean: the field's own validation says so


def _switch(data: dict[str, Any], what: str, given: list[str]) -> dict[str, Any]:
    """``enabled`` follows from the block when it is not written; written false beside
    settings that only mean something when on, it is an error naming both: the block would
    look protected and not be."""
    if "enabled" not in data:
        return {**data, "enabled": bool(given)}
    if _written_as(data, "enabled", False) and given:
        keys = ", ".join(given)
        raise ValueError(f"enabled: false switches {what} off, so {keys} would be ignored; "
                         f"remove enabled: false ({what} then follows from the block) or "
                         f"remove {keys}")
    return data


class AuthConfig(_Strict):
    """Who may call (the guide's ``server.auth``)."""

    enabled: bool = False
    """Whether calls are authenticated; follows from the block when not written."""
    jwks_url: str | None = None
    """JWT: the identity provider's key set (https); needs issuer and audience."""
    issuer: str | None = None
    """JWT: the exact ``iss`` tokens must carry."""
    audience: str | None = None
    """JWT: the ``aud`` tokens must carry."""
    require_auth: bool = True
    """Refuse calls without credentials (except excluded_paths)."""
    excluded_paths: list[str] = Field(default_factory=lambda: ["/health"])
    """gRPC paths served without a credential. Health is, by default: probes carry no token;
    a list without ``/health`` (``[]`` too) makes it need one."""
    refresh_interval: Duration = 900.0
    """How often the JWKS is fetched again."""
    jwks_cooldown: Duration = 30.0
    """At most one extra JWKS fetch per this long, for tokens with an unknown kid."""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    """Accepted JWT algorithms: asymmetric only."""
    leeway: Duration = 30.0
    """Clock skew allowed on exp and nbf."""
    max_failed_attempts: Count = 10
    """Failed credentials a peer address (a unix peer: its uid) may send per
    ``failed_attempts_window``; past it, its credentials are refused unchecked."""
    failed_attempts_window: Duration = Field(default=60.0, gt=0)
    """The window ``max_failed_attempts`` refills over."""
    api_keys: list[str | ApiKey] = Field(default_factory=list)
    """Accepted API keys: ``${VAR}`` (audited as ``api_key[N]``) or ``{name, key}`` / ``{name,
    sha256}``."""

    @model_validator(mode="before")
    @classmethod
    def _enabled_follows_the_block(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return _switch(data, "authentication", [
            *(k for k in ("api_keys", "jwks_url", "issuer", "audience") if data.get(k)),
            *(["require_auth"] if _written_as(data, "require_auth", True) else [])])

    @model_validator(mode="after")
    def _excluded_paths_open_one_service_at_most(self) -> AuthConfig:
        # The interceptor admits every method under a path ending in "/": "/" would be all.
        if wide := [p for p in self.excluded_paths
                    if p.endswith("/") and not re.fullmatch(r"/[^/]+/", p)]:
            raise ValueError(f"excluded_paths: {', '.join(map(repr, wide))} would open more "
                             "than one service; a path ending in / names one whole service "
                             "(/pkg.Service/)")
        return self

    @model_validator(mode="after")
    def _asymmetric_only(self) -> AuthConfig:
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                   "ES512", "EdDSA"}
        if bad := [a for a in self.algorithms if a not in allowed]:
            raise ValueError(f"algorithms: {', '.join(bad)} not accepted; only asymmetric "
                             f"ones ({', '.join(sorted(allowed))})")
        return self

    @model_validator(mode="after")
    def _jwt_needs_all_three(self) -> AuthConfig:
        given = [k for k in ("jwks_url", "issuer", "audience") if getattr(self, k)]
        if given and len(given) != 3:
            missing = sorted({"jwks_url", "issuer", "audience"} - set(given))
            raise ValueError(
                "JWT authentication needs jwks_url, issuer and audience together; "
                f"missing: {', '.join(missing)}"
            )
        return self

    def named_api_keys(self) -> list[ApiKey]:
        """Every API key with a name; plain keys are named ``api_key[N]`` by position."""
        return [k if isinstance(k, ApiKey) else ApiKey(name=f"api_key[{i}]", key=k)
                for i, k in enumerate(self.api_keys)]

    @property
    def jwt(self) -> bool:
        """Whether JWT authentication is configured."""
        return self.enabled and bool(self.jwks_url)


class RateLimitConfig(_Strict):
    """The guide's ``server.rate_limiting``: tool calls a minute, globally or per principal."""

    enabled: bool = False
    """Whether tool calls are rate limited; follows from the block when not written."""
    requests_per_minute: Count = 60
    """Tool calls a minute, refilled steadily."""
    burst: Count = 10
    """Tool calls that may come at once."""
    per_user: bool = False
    """One bucket per principal (else one for everyone)."""

    @model_validator(mode="before")
    @classmethod
    def _enabled_follows_the_block(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return _switch(data, "rate limiting",
                       [k for k in ("requests_per_minute", "burst", "per_user") if k in data])


class MetricsConfig(_Strict):
    """Prometheus metrics, served over HTTP on their own address (never the gRPC port)."""

    enabled: bool = False
    """Serve ``/metrics``."""
    listen: str = "127.0.0.1:9464"
    """``HOST:PORT`` of the metrics endpoint; loopback unless the scraper is elsewhere."""
    endpoint: str | None = None
    """The guide's name for ``listen`` (``HOST:PORT``); ``listen`` wins when both are set."""


class TracingConfig(_Strict):
    """OpenTelemetry spans for each call, exported over OTLP/gRPC (needs the ``otel``
    extra: ``pip install execgate[otel]``)."""

    enabled: bool = False
    """Export spans."""
    endpoint: str | None = None
    """The OTLP collector, e.g. ``http://localhost:4317``."""
    service_name: str = "execgated"
    """The ``service.name`` resource attribute of every span."""


class ObservabilityConfig(_Strict):
    """The guide's ``server.observability``: metrics and tracing."""

    metrics: MetricsConfig = MetricsConfig()
    """Prometheus metrics."""
    tracing: TracingConfig = TracingConfig()
    """OpenTelemetry tracing."""


class TlsConfig(_Strict):
    """TLS for every TCP listener; with client_ca, mutual TLS (client certificates required
    and verified). The files are read again when they change, without a restart."""

    cert: str
    """Server certificate chain (PEM)."""
    key: str
    """Its private key (PEM)."""
    client_ca: Annotated[str | None, BeforeValidator(lambda v: v or None)] = None
    """CA bundle (PEM) client certificates must chain to; setting it requires them.
    Empty (e.g. from ``${CLIENT_CA:-}``) means none."""


class ClusterConfig(_Strict):
    """A fleet: daemons sharing approvals, rate limits and runs through Redis (or Valkey).
    Off when absent: a single daemon keeps its state in memory and needs no Redis (nor the
    ``cluster`` extra: ``pip install execgate[cluster]``)."""

    redis_url: str
    """Where the fleet's Redis is: ``unix:///run/redis/redis.sock`` or
    ``redis://HOST:6379/0`` (``rediss://`` for TLS); credentials in it may come from
    ``${VAR}``."""
    host_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200,
                         pattern=r"^[A-Za-z0-9._-]+$")
    """This daemon's name in the fleet (unique in it); default: the host name."""
    namespace: str = Field(default="execgate", min_length=1, max_length=100,
                           pattern=r"^[A-Za-z0-9._-]+$")
    """Prefix of every key (``NAMESPACE:KIND:...``), so that fleets can share one Redis."""
    lease: Duration = Field(default=15.0, ge=1.0)
    """A host's heartbeat key lives this long, refreshed every third of it; the runs of a
    host whose lease expired are LOST."""
    advertise: str
    """This daemon's gRPC address as its peers reach it (``HOST:PORT``)."""
    on_redis_down: Literal["closed", "local"] = "closed"
    """Rate limits while Redis is unreachable: ``closed`` refuses calls (UNAVAILABLE),
    ``local`` falls back to this daemon's own bucket. Approvals always fail closed."""
    key_env: str = Field(default="EXECGATE_CLUSTER_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding the fleet's shared secret, with which daemons
    authenticate their calls to each other."""

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value.split('://')[0]!r} is not a Redis URL: write "
                             "redis://HOST:PORT/DB, rediss://... or unix:///PATH")
        return value


class ServerConfig(_Strict):
    """Listeners, the daemon-side PATH and server-wide bounds."""

    port: int | None = Field(default=None, ge=0, le=65535)
    """Shorthand for listening on ``127.0.0.1:PORT`` (plaintext is loopback-only)."""
    listen: list[str] = Field(default_factory=list)
    """Addresses: ``HOST:PORT`` or ``unix:PATH``."""
    path: str = "/usr/local/bin:/usr/bin:/bin"
    """The fixed PATH that resolves argv[0]; a request can never change it."""
    max_concurrent_runs: Count = 64
    """Runs at once; past it calls get RESOURCE_EXHAUSTED."""
    drain_timeout: Duration = 10.0
    """On SIGTERM, how long running calls may go on finishing before they are stopped; keep
    it, plus the longest kill_grace, below the unit's TimeoutStopSec (then everything is
    killed at once). A second SIGTERM or SIGINT skips the wait."""
    tls: TlsConfig | None = None
    """TLS (and mutual TLS) for every TCP listener."""
    allow_remote_plaintext: bool = False
    """Serve plaintext on non-loopback addresses (credentials then cross the network in the
    clear). Only for a network that is itself encrypted and trusted."""
    unix_uids: list[Uid] | None = None
    """Uids that may call over unix sockets (SO_PEERCRED); default: the daemon's own."""
    auth: AuthConfig = AuthConfig()
    """Who may call: API keys, JWTs, client certificates."""
    rate_limiting: RateLimitConfig = RateLimitConfig()
    """Tool calls a minute, globally or per principal."""
    observability: ObservabilityConfig = ObservabilityConfig()
    """Metrics and tracing."""
    cluster: ClusterConfig | None = None
    """A fleet sharing approvals, rate limits and runs through Redis; off when absent."""
    cors: Any = _ignored("execgated speaks gRPC, not HTTP.")


class ApprovalsConfig(_Strict):
    """Human approval (the guide's require_approval), and who may give it."""

    timeout: Duration = 300.0
    """How long a request waits before it expires (denied)."""
    approvers: list[AccessRule] = Field(default_factory=list)
    """Principals that may decide others' requests (ApprovalService)."""
    allow_self_approval: bool = True
    """Whether a caller may approve its own request; false is four-eyes."""


class RunsConfig(_Strict):
    """Runs that outlive their connection: replay, retention, detached runs and their caps."""

    replay_bytes: Size = 4 * 1024**2
    """Output kept per run (stdout and stderr together) for AttachRun; past it the first
    quarter (the head) and the latest output (the tail) are kept, and what lay between is
    counted as dropped. Also what a detached run costs the daemon at most."""
    retention: Duration = 600.0
    """How long a run's exit and buffer stay attachable after it ended."""
    detached_max_time: Duration = 3600.0
    """How long a detached run may go on with nobody attached (reattaching starts it over);
    then it is stopped with reason TIMEOUT. Its tool's max_execution_time still applies."""
    handover_grace: Duration = 30.0
    """How long a run RunToExit handed over to its caller (answering before the run's exit)
    waits for the caller to attach, its output held for it meanwhile (up to 2 MiB ahead,
    then the command waits), or to attach again after leaving early; then it is stopped
    with reason TIMEOUT. CancelRun and the daemon's shutdown let the held output go."""
    heartbeat_interval: Duration = 15.0
    """A quiet Execute, Run or AttachRun stream gets a heartbeat message this often."""
    max_running_per_principal: Count = 32
    """Runs one principal may have going at once (server.max_concurrent_runs is the total)."""
    max_detached: Count = 64
    """Detached runs going at once, for the whole daemon."""
    max_detached_per_principal: Count = 16
    """Detached runs one principal may have going at once."""
    max_pending_approvals_per_principal: Count = 32
    """Approvals one principal may have waiting at once."""
    operators: list[AccessRule] = Field(default_factory=list)
    """Principals that may list, attach, signal and cancel everyone's runs."""


class AuditFileConfig(_Strict):
    """An append-only, hash-chained audit file, written whatever the log level
    (``execgated verify-audit`` checks it)."""

    path: str
    """The file; records are appended, and a rotated file is continued by the next (move it
    away, then SIGHUP: the new file's first record carries the old one's last hash)."""
    fsync: Literal["every", "interval"] = "interval"
    """``every`` record reaches the disk before the call goes on (slow), or at most
    ``fsync_interval`` after it was written."""
    fsync_interval: Duration = 1.0
    """With ``fsync: interval``, the longest a record waits for the disk."""
    hmac_key_env: str | None = None
    """Name of an environment variable holding a key: the chain is then HMAC-SHA256, which
    a writer without the key cannot forge (give the same variable to verify-audit)."""


class LoggerConfig(_Strict):
    """Log level and format; audit events go through the same logger, and to the audit file
    when there is one."""

    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    """Least severe level logged (audit events are always logged)."""
    format: Literal["json", "text"] = "json"
    """``json`` lines or human-readable ``text``."""
    redact: dict[str, str] = Field(default_factory=dict)
    """Secret patterns (name: regular expression) replaced by ``[redacted:<name>]`` in the
    audit's argv, added to the defaults (bearer tokens, ``--password=``, AWS, GitHub and
    Slack keys, URLs with credentials ...); an empty pattern turns a default off. A group
    named ``secret`` limits the replacement to it."""
    audit_file: AuditFileConfig | None = None
    """A tamper-evident audit file besides the log."""

    @field_validator("redact")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name}: not a regular expression: {exc}") from None
        return value


def policy_version(value: object) -> str:
    """The policy format's version: "2" (or 2) only."""
    if value in ("2", 2) and not isinstance(value, bool):
        return "2"
    raise ValueError('only "2" is supported (this daemon reads the version 2 policy format)')


class PolicyConfig(_Strict):
    """A whole policy file."""

    version: Annotated[Literal["2"], BeforeValidator(policy_version),
                       WithJsonSchema({"enum": ["2", 2]})] = "2"
    """The policy format: ``"2"``."""
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    """The tools, by name: command tools (argv) and function tools (named arguments)."""
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    """The agents, by name: who sees each and which tools it may call."""
    server: ServerConfig = ServerConfig()
    """Listeners, authentication, rate limiting and server-wide bounds."""
    logger: LoggerConfig = LoggerConfig()
    """Log level and format."""
    sandbox: SandboxConfig = SandboxConfig()
    """Kernel confinement of every command (a tool may change it)."""
    approvals: ApprovalsConfig = ApprovalsConfig()
    """Human approval: how long a request waits and who may decide it."""
    runs: RunsConfig = RunsConfig()
    """Runs that outlive their connection: replay buffer, retention, detached runs, caps."""
    llms: Any = _ignored("an LLM platform's model settings.")

    def sandbox_for(self, tool: str) -> SandboxConfig:
        """The sandbox of ``tool``: the policy's, with the tool's override applied."""
        override = self.tools[tool].sandbox
        return override.apply(self.sandbox) if override else self.sandbox

    @field_validator("tools")
    @classmethod
    def _tools_are_coherent(cls, tools: dict[str, ToolConfig]) -> dict[str, ToolConfig]:
        # A field validator, not a model one: it runs even when another section fails, so
        # that every problem is listed at once.
        problems = []
        for name, tool in tools.items():
            if tool.type == "function":
                handler = tool.handler or name
                if handler not in FUNCTION_HANDLERS:
                    problems.append(
                        f"tools.{name}.handler: {handler!r} is not a built-in function tool "
                        f"(choose one of {', '.join(FUNCTION_HANDLERS)})"
                    )
                if tool.allowed_commands or tool.denied_commands:
                    problems.append(f"tools.{name}: allowed_commands/denied_commands "
                                    "apply to command tools only")
            elif tool.handler is not None:
                problems.append(f"tools.{name}.handler: only function tools have a handler")
            if tool.allowed_commands and not tool.deny_by_default:
                problems.append(f"tools.{name}: allowed_commands has no effect with "
                                "deny_by_default: false (every command not denied runs); "
                                "remove one of the two")
            for command in (*tool.allowed_commands, *tool.denied_commands):
                if not command or "/" in command or command in (".", ".."):
                    problems.append(f"tools.{name}: {command!r} is not a bare command name")
            if tool.require_approval_for and tool.type != "command":
                problems.append(f"tools.{name}.require_approval_for: command tools only")
            if tool.approval_prompt is not None:
                handler = tool.handler or name
                allowed = PROMPT_FIELDS | (PROMPT_ARGUMENTS.get(handler, frozenset())
                                           if tool.type == "function" else frozenset())
                try:
                    fields = {f for _, f, _, _ in string.Formatter().parse(tool.approval_prompt)
                              if f is not None}
                except ValueError as exc:
                    problems.append(f"tools.{name}.approval_prompt: {exc}")
                    continue
                if unknown := sorted(fields - allowed):
                    problems.append(
                        f"tools.{name}.approval_prompt: unknown placeholder(s) "
                        f"{', '.join('{' + f + '}' for f in unknown)}; this tool offers "
                        f"{', '.join('{' + f + '}' for f in sorted(allowed))}")
        if problems:  # one per line: the loader reports (and places) each on its own
            raise ValueError("\n".join(problems))
        return tools
