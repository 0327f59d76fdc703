"""SSL contexts for every frontend, built from the ``[general]`` TLS keys.

The engine decides when a connection switches to TLS (the ``StartTls`` effect); the
frontend does the handshake with one of two contexts built here, once at start and
again on each reload:

* ``for_clients`` (the pooler is the TLS server): ``tls_certificate`` and
  ``tls_private_key``; in ``client_tls_sslmode`` ``verify-ca`` and ``verify-full``, a
  client must present a certificate signed by ``client_tls_ca_file``;
* ``for_servers`` (the pooler is a TLS client of PostgreSQL): encryption only, as
  PgCat does, unless ``verify_server_certificate``, which checks the server's
  certificate chain (against ``server_tls_ca_file``, else the system's CAs) and that
  the certificate names the host the pooler connected to (libpq's verify-full).

TLS 1.2 is the oldest version offered, as in PostgreSQL 16's default
``ssl_min_protocol_version``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgsansio.frontends import FrontendError

if TYPE_CHECKING:
    from pgsansio.config.model import General

__all__ = ["TlsContexts", "tls_contexts"]


@dataclass(frozen=True)
class TlsContexts:
    for_clients: ssl.SSLContext | None
    """For accepting clients' TLS; None when no certificate is configured."""
    for_servers: ssl.SSLContext | None
    """For TLS towards PostgreSQL; None unless ``server_tls``."""

    def context(self, kind: str) -> ssl.SSLContext:
        """The context for a ``StartTls`` of ``kind`` ("client" or "server").

        Raises:
            ssl.SSLError: none is configured (the engine asked for TLS it should not
                have); the frontend reports it as the handshake's failure.
        """
        ctx = self.for_clients if kind == "client" else self.for_servers
        if ctx is None:
            raise ssl.SSLError(f"no TLS is configured for {kind} connections")
        return ctx


def tls_contexts(general: General) -> TlsContexts:
    """Build both contexts; a file that does not load is a FrontendError naming its key."""
    return TlsContexts(_for_clients(general), _for_servers(general))


def _for_clients(general: General) -> ssl.SSLContext | None:
    if general.tls_certificate is None or general.client_tls_sslmode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(general.tls_certificate, general.tls_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise FrontendError(
            f"general.tls_certificate / tls_private_key: cannot load "
            f'"{general.tls_certificate}" with "{general.tls_private_key}": {_reason(exc)}'
        ) from None
    if general.client_tls_sslmode in ("verify-ca", "verify-full"):
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, "client_tls_ca_file", general.client_tls_ca_file)
    return ctx


def _for_servers(general: General) -> ssl.SSLContext | None:
    if not general.server_tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if general.verify_server_certificate:
        if general.server_tls_ca_file is not None:
            _load_ca(ctx, "server_tls_ca_file", general.server_tls_ca_file)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _load_ca(ctx: ssl.SSLContext, key: str, path: str | None) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise FrontendError(f'general.{key}: cannot load "{path}": {_reason(exc)}') from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
