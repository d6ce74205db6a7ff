"""The observers a policy asks for, assembled around one ``Audit``: the audit file, metrics
and tracing all watch the same records. Restart-only: a reload reopens the audit file (to
continue a rotated chain) and changes nothing else here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import structlog

from execgate.daemon.audit import Audit, AuditRecord
from execgate.daemon.audit_file import AuditFile
from execgate.daemon.config import AuditFileConfig, LoggerConfig, ObservabilityConfig
from execgate.daemon.redact import Redactor

log = structlog.get_logger()


class Closable(Protocol):
    """A running observer's handle."""

    def close(self) -> None:
        """Stop it."""


class ObserverError(Exception):
    """An observer the policy asks for cannot start; the message says what to change."""


class AuditFileSink:
    """Writes each audit record to the audit file."""

    def __init__(self, file: AuditFile) -> None:
        self._file = file

    def observe(self, record: AuditRecord) -> None:
        """Append the record: its event and level, then its fields."""
        self._file.write({"event": record.event, "level": record.level, **record.fields})


def hmac_key(config: AuditFileConfig, environ: Mapping[str, str]) -> bytes | None:
    """The audit file's HMAC key from the environment; None when none is configured."""
    if config.hmac_key_env is None:
        return None
    key = environ.get(config.hmac_key_env, "")
    if not key:
        raise ObserverError(f"logger.audit_file.hmac_key_env: ${config.hmac_key_env} is "
                            "not set (or empty); set it, or remove hmac_key_env")
    return key.encode()


class Observing:
    """The audit and whatever watches it; ``close`` stops them all."""

    def __init__(self, logger: LoggerConfig, observability: ObservabilityConfig,
                 environ: Mapping[str, str]) -> None:
        self.audit = Audit(redact=Redactor(logger.redact).argv)
        self._file: AuditFile | None = None
        self._closers: list[Closable] = []
        try:
            self._start(logger, observability, environ)
        except BaseException:
            self.close()
            raise

    def _start(self, logger: LoggerConfig, observability: ObservabilityConfig,
               environ: Mapping[str, str]) -> None:
        if logger.audit_file is not None:
            config = logger.audit_file
            try:
                self._file = AuditFile(Path(config.path), config.fsync, config.fsync_interval,
                                       hmac_key(config, environ))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise ObserverError(f"logger.audit_file.path: cannot append to "
                                    f"{config.path}: {reason}") from None
            self.audit.subscribe(AuditFileSink(self._file))
        if observability.metrics.enabled:
            from execgate.daemon.metrics import Metrics
            metrics = Metrics()
            listen = observability.metrics.listen
            try:
                server = metrics.serve(listen)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise ObserverError(f"server.observability.metrics.listen: cannot serve "
                                    f"metrics on {listen}: {reason}") from None
            self._closers.append(server)
            self.audit.subscribe(metrics)
            log.info("metrics.listening", address=server.address)
        if observability.tracing.enabled:
            self._trace(observability)

    def _trace(self, observability: ObservabilityConfig) -> None:
        """Spans for each call; without the otel extra the daemon serves all the same (a
        record of calls, not a protection), and says no spans leave."""
        try:
            from execgate.daemon.tracing import Tracing
        except ImportError:
            log.warning("tracing.unavailable", reason="the otel extra is not installed (pip "
                        "install 'execgate[otel]'); no spans are exported")
            return
        config = observability.tracing
        tracing = Tracing(config.service_name, config.endpoint)
        self._closers.append(tracing)
        self.audit.subscribe(tracing)
        log.info("tracing.exporting", endpoint=config.endpoint or "the OTLP default")

    def reopen(self) -> None:
        """Continue the audit chain in a new file if the old one was moved away."""
        if self._file is not None:
            self._file.reopen()

    def close(self) -> None:
        """Stop every observer; the audit file is synced last, after the others' records."""
        for closer in reversed(self._closers):
            closer.close()
        self._closers.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
