"""``execgated``: serve a policy, check one, or check this host's sandbox.

    execgated serve [--config FILE] [--listen ADDR ...]
    execgated check-config FILE [--listen ADDR ...] [--strict]
    execgated doctor [--config FILE]
    execgated schema
    execgated explain --config FILE [--agent A] [--tool T] [--as WHO | --token T] -- ARGV...
    execgated install-systemd [--prefix DIR] [--execgated PATH] [--force]
    execgated verify-audit [--hmac-key-env VAR] FILE...
"""

from __future__ import annotations

import os

# gRPC must never try to survive a fork of this process: nothing here forks with Python code.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse
import asyncio
import atexit
import importlib.metadata
import logging
import secrets
import sys
from pathlib import Path

import structlog

from execgate.client._local import write_local_token
from execgate.daemon import audit_cli, explain, install
from execgate.daemon.auth import digest
from execgate.daemon.config import (
    DEFAULT_POLICY,
    ConfigError,
    LoadedPolicy,
    LoggerConfig,
    PolicyConfig,
    TlsConfig,
    expansion_env,
    load_policy,
    parse_policy,
    policy_schema_text,
    unenforced,
)
from execgate.daemon.logsink import BatchedLoggerFactory
from execgate.daemon.preflight import Preflight, make_policy, preflight
from execgate.daemon.sandbox import HostSupport, Spawner
from execgate.daemon.server import StartupError, sandbox_report, serve
from execgate.daemon.systemd import ActivationError, listen_sockets

EXIT_CONFIG = 2


def configure_logging(config: LoggerConfig) -> None:
    """structlog to stderr, JSON or text, at the policy's level. Audit events use the same
    format and sink but not the level (``execgate.daemon.audit``): a record is not chatter."""
    level = logging.getLevelNamesMapping()[{"warn": "WARNING"}.get(config.level,
                                                                   config.level.upper())]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False))
    factory = BatchedLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True)
    atexit.register(factory.logger.flush)


def _check_config(path: Path, listen: list[str], strict: bool = False) -> int:
    """Exit 2 listing every problem serve would refuse (the same checks, from this directory),
    each at its line; ``strict`` counts the warnings as problems too."""
    try:
        loaded, known = _load(path, token="")
        if strict:
            known = [*known, *loaded.warnings]
        preflight(loaded.config, loaded.source, Path.cwd(), listen, known=known,
                  marks=loaded.marks)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.report():
            print(f"  error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in loaded.marks.report(loaded.source, loaded.warnings):
        print(f"  warning: {warning}")
    for item in unenforced(loaded.config):
        print(f"  not enforced: {item}")
    print(f"{path}: valid")
    return 0


def _load(config_path: Path | None, token: str) -> tuple[LoadedPolicy, list[str]]:
    """The policy, and the problems that leave it whole (for preflight to list with its
    own); raises ConfigError when the file itself does not validate."""
    try:
        if config_path is not None:
            return load_policy(config_path), []
        env = {**expansion_env(None, Path.cwd()), "EXECGATE_LOCAL_TOKEN": token}
        return parse_policy(DEFAULT_POLICY, "(embedded default)", env), []
    except ConfigError as exc:
        if exc.config is None:
            raise
        return LoadedPolicy(config=exc.config, source=exc.source, warnings=exc.warnings,
                            marks=exc.marks), exc.problems


def _doctor(config_path: Path | None) -> int:
    """Print the sandbox layers this host supports; exit 1 when the policy needs a missing one."""
    loaded, known = _load(config_path, token=secrets.token_urlsafe(8))  # doctor serves nothing
    if known:
        raise ConfigError(loaded.source, known, marks=loaded.marks)
    policy = make_policy(loaded.config, loaded.source, Path.cwd())
    host = _probe_host()
    print(f"running as {'root' if host.root else 'an unprivileged user'}"
          + (f"; user namespace: {host.user_namespace}" if host.user_namespace else ""))
    for layer, missing in host.report():
        print(f"  {'ok  ' if missing is None else 'MISSING'}  {layer}"
              + (f": {missing}" if missing else ""))
    report = sandbox_report(policy, host)
    for level, message in report:
        print(f"{level}: {message}")
    print(f"policy {loaded.source}: " + ("every tool can run confined as configured"
                                         if not any(lv == "error" for lv, _ in report)
                                         else "some tools cannot run on this host"))
    return 1 if any(level == "error" for level, _ in report) else 0


def _probe_host() -> HostSupport:
    """What this host's sandbox supports, as the helper serve starts finds it."""
    spawner = Spawner.start()
    try:
        return spawner.host
    finally:
        spawner.close()


def _explain(args: argparse.Namespace) -> int:
    """Print the verdict on one call; exit 0 allow, 1 deny, 3 ask, 2 a policy that fails."""
    loaded, known = _load(Path(args.config), token="")
    if known:
        raise ConfigError(loaded.source, known, marks=loaded.marks)
    policy = make_policy(loaded.config, loaded.source, Path.cwd())
    try:
        explanation = explain.explain_args(args, loaded.config, policy,
                                           None if args.no_host else _probe_host())
    except ValueError as exc:
        print(f"execgated explain: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(explain.output(explanation, not args.no_host, args.json))
    return explanation.exit_status


def _auth_flags(args: argparse.Namespace) -> dict[str, object]:
    """The guide's flags as changes to server.auth: the three JWT flags together, or a warning
    and JWT stays off (exactly as the guide says)."""
    changes: dict[str, object] = {}
    jwt = {"jwks_url": args.auth_jwks_url, "issuer": args.auth_issuer,
           "audience": args.auth_audience}
    given = {k: v for k, v in jwt.items() if v}
    if given and len(given) < 3:
        print("execgated: warning: --auth-jwks-url, --auth-issuer and --auth-audience go "
              "together; JWT authentication stays off", file=sys.stderr)
    elif given:
        changes.update(enabled=True, **given)
    if args.no_auth_required:
        changes["require_auth"] = False
    return changes


def _tls_flags(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise StartupError("--tls-cert and --tls-key go together")
    return TlsConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)


def _serve(config_path: Path | None, listen: list[str], auth: dict[str, object],
           tls: TlsConfig | None) -> int:
    # The embedded default gets a fresh local token so that only this user can call it.
    token = secrets.token_urlsafe(32) if config_path is None else None
    try:
        inherited = listen_sockets(os.environ)  # socket activation: first, and only once
    except ActivationError as exc:
        raise StartupError(str(exc)) from None
    activated = [sock.address for sock in inherited]

    def load() -> tuple[LoadedPolicy, list[str]]:
        """The policy with the command line's flags applied, as at start and on reload."""
        loaded, known = _load(config_path, token or "")
        if auth or tls:
            server = loaded.config.server
            changes: dict[str, object] = {"auth": server.auth.model_copy(update=auth)}
            if tls:
                changes["tls"] = tls
            loaded = LoadedPolicy(
                config=loaded.config.model_copy(update={"server": server.model_copy(
                    update=changes)}),
                source=loaded.source, warnings=loaded.warnings)
        return loaded, known

    loaded, known = load()
    configure_logging(loaded.config.logger)
    log = structlog.get_logger()
    for warning in (*loaded.warnings, *unenforced(loaded.config)):
        log.warning("config", warning=warning)
    checked = preflight(loaded.config, loaded.source, Path.cwd(), listen,
                        create_jails=config_path is None, known=known, inherited=activated,
                        marks=loaded.marks)

    def reload() -> tuple[str, PolicyConfig, Preflight]:
        again, known = load()
        for warning in (*again.warnings, *unenforced(again.config)):
            log.warning("config", warning=warning)
        return again.source, again.config, preflight(
            again.config, again.source, Path.cwd(), listen, known=known, inherited=activated,
            marks=again.marks)

    def ready(bound: list[str]) -> None:
        if token is not None:
            path = write_local_token(bound[0], token)
            print(f"execgated: embedded default policy (read-only commands in "
                  f"{Path.cwd() / 'workspace'}); token in {path} (execgate finds it; other "
                  "clients send 'authorization: Bearer <token>')", flush=True)
        print(f"execgated: serving on {', '.join(bound)}", flush=True)

    # The embedded default is made at start (its token, its jails): a reload has nothing
    # to read again.
    asyncio.run(serve(loaded.config, checked, ready,
                      reload if config_path is not None else None, inherited,
                      source=loaded.source))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``execgated``."""
    parser = argparse.ArgumentParser(prog="execgated",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version",
                        version=f"execgated {importlib.metadata.version('execgate')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve tool calls")
    serve_cmd.add_argument("--config", type=Path,
                           help="policy file (default: the embedded safe default)")
    serve_cmd.add_argument("--listen", action="append", default=[], metavar="ADDR",
                           help="HOST:PORT or unix:PATH; repeatable; overrides the policy")
    check_cmd = commands.add_parser("check-config", help="validate a policy file")
    check_cmd.add_argument("file", type=Path)
    check_cmd.add_argument("--listen", action="append", default=[], metavar="ADDR",
                           help="the addresses serve would be given, if the policy has none")
    check_cmd.add_argument("--strict", action="store_true",
                           help="count warnings as errors (for pipelines that lint policies)")
    commands.add_parser("schema", help="print the policy's JSON Schema (for editors)")
    explain.add_command(commands)
    install.add_command(commands)
    audit_cli.add_command(commands)
    for cmd in (serve_cmd,):
        auth = cmd.add_argument_group("authentication (the guide's flags; they override the "
                                      "policy's server.auth)")
        auth.add_argument("--auth-jwks-url", help="JWKS of the identity provider")
        auth.add_argument("--auth-issuer", help="expected iss, exactly")
        auth.add_argument("--auth-audience", help="expected aud")
        auth.add_argument("--no-auth-required", action="store_true",
                          help="admit calls without credentials (bad credentials still fail)")
        tls = cmd.add_argument_group("TLS for TCP listeners (overrides server.tls)")
        tls.add_argument("--tls-cert", help="server certificate chain (PEM)")
        tls.add_argument("--tls-key", help="its private key (PEM)")
        tls.add_argument("--tls-client-ca", help="require client certificates from this CA")
    hash_cmd = commands.add_parser("hash-key", help="print the sha256 of an API key read from "
                                   "stdin, for api_keys: [{name: ..., sha256: ...}]")
    hash_cmd.set_defaults(command="hash-key")
    doctor_cmd = commands.add_parser("doctor", help="which sandbox layers this host supports")
    doctor_cmd.add_argument("--config", type=Path,
                            help="policy whose required layers to check (default: embedded)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.file, args.listen, args.strict)
        if args.command == "schema":
            print(policy_schema_text(), end="")
            return 0
        if args.command == "explain":
            return _explain(args)
        if args.command == "install-systemd":
            return install.run_command(args)
        if args.command == "verify-audit":
            return audit_cli.run_command(args)
        if args.command == "doctor":
            return _doctor(args.config)
        if args.command == "hash-key":
            key = sys.stdin.readline().rstrip("\n")
            if not key:
                print("execgated: give the key on stdin", file=sys.stderr)
                return EXIT_CONFIG
            print(digest(key).hex())
            return 0
        return _serve(args.config, args.listen, _auth_flags(args), _tls_flags(args))
    except ConfigError as exc:
        print(f"execgated: {exc.source}:", file=sys.stderr)
        for problem in exc.report():
            print(f"  error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"execgated: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
