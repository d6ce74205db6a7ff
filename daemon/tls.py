"""TLS server credentials that follow their files: short-lived certificates are replaced on
disk and the next connection uses them, without a restart.

gRPC asks the fetcher at every new connection; it answers None (keep what you have) unless
a file changed, and a change that does not load (half-written files) keeps the old ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import structlog

from execgate.daemon.config import TlsConfig

log = structlog.get_logger()


class ReloadingCredentials:
    """Server credentials for ``config``, reloaded when the files change."""

    def __init__(self, config: TlsConfig) -> None:
        self._paths = [Path(p) for p in (config.cert, config.key, config.client_ca) if p]
        self._config = config
        self._stamp = self._stamps()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._load(), self._fetch, require_client_authentication=config.client_ca is not None)

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self._paths:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        c = self._config
        root = Path(c.client_ca).read_bytes() if c.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(Path(c.key).read_bytes(), Path(c.cert).read_bytes())], root_certificates=root)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            loaded = self._load()
        except OSError as exc:
            log.warning("tls.reload_failed", reason=str(exc))
            return None
        self._stamp = stamp
        log.info("tls.reloaded", cert=self._config.cert)
        return loaded


def certificate_identity(auth_context: dict[str, list[bytes]]) -> str | None:
    """A verified client certificate's identity: URI SAN (spiffe://...), DNS SAN, then CN."""
    for key in ("peer_uri", "peer_dns", "x509_common_name"):
        values = auth_context.get(key)
        if values:
            return values[0].decode(errors="replace")
    return None
