"""TLS negotiation: the SSLRequest steps of client and server logins.

The engine decides when a connection is encrypted; the frontend does the handshake
(the ``StartTls`` effect) and reports it with ``client_tls`` / ``server_tls``.

Clients, with PgBouncer's ``client_tls_sslmode``: ``disable`` answers an SSLRequest
``N``; every other mode answers ``S`` when a certificate is configured. ``require``,
``verify-ca`` and ``verify-full`` refuse a client that sends its StartupMessage in
clear with FATAL 28000 (as PostgreSQL does for a ``hostssl``-only pg_hba.conf), and
the frontend checks client certificates in the ``verify-*`` modes (both modes check
the certificate against ``client_tls_ca_file``; there is no host name to compare a
client's certificate with). A CancelRequest is served with or without TLS, as
PostgreSQL does. GSSENCRequest is always answered ``N``.

Servers, with PgCat's ``server_tls``: the pooler sends an SSLRequest before the
StartupMessage; a server that answers ``N`` is used in clear, as PgCat does, unless
``verify_server_certificate`` is set, which makes the pooler refuse an unencrypted
server (verifying a certificate that never comes would be no check at all). Cancel
requests go to servers in clear.

Plaintext injection (CVE-2021-23214 and CVE-2021-23222): bytes received after an
SSLRequest, or after a server's ``S``, were never encrypted; the protocol core refuses
them, so the engine never acts on them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgsansio.protocol import SSLRequest, SSLResponse

from ._base import Base
from ._effects import StartTls
from ._login import fatal
from ._objects import P_CANCEL
from ._relay import ClientFatal
from ._states import ServerState

if TYPE_CHECKING:
    from ._objects import Client, ServerConn

__all__ = ["Tls"]

_TLS_REQUIRED = ("require", "verify-ca", "verify-full")


class Tls(Base):
    if TYPE_CHECKING:  # defined in ._engine

        def _send_startup(self, s: ServerConn) -> None: ...

        def _read_client(self, c: Client) -> None: ...

    # --- clients --------------------------------------------------------------------

    def _client_ssl_request(self, c: Client) -> bool:
        """Answer a client's SSLRequest: ``S`` and StartTls (True), or ``N``."""
        general = self.config.general
        if general.tls_certificate is None or general.client_tls_sslmode == "disable":
            self._send_client(c, SSLResponse(False))
            return False
        # Raises RemoteProtocolError if the client sent more after its request.
        self._send_client(c, SSLResponse(True))
        self._out.append(StartTls("client", c.cid))
        return True

    def _client_tls_done(self, c: Client, error: str | None) -> None:
        if error is not None:
            self._log(logging.INFO, f"client {c.cid} from {c.peer}: TLS failed: {error}")
            self._drop_client(c, None, closed=True)
            return
        c.tls = True
        self._read_client(c)

    def _check_client_tls(self, c: Client) -> None:
        """Refuse a StartupMessage in clear when the mode requires TLS."""
        if not c.tls and self.config.general.client_tls_sslmode in _TLS_REQUIRED:
            raise ClientFatal(
                "28000",
                "SSL required: this pooler only accepts encrypted connections "
                "(connect with sslmode=require or stronger)",
            )

    # --- servers --------------------------------------------------------------------

    def _server_ssl_request(self, s: ServerConn) -> bool:
        """Start a server login with an SSLRequest if ``server_tls``; whether it did."""
        if not self.config.general.server_tls or s.purpose == P_CANCEL:
            return False
        self._send_server(s, s.conn.send(SSLRequest()))
        return True

    def _server_ssl_answer(self, s: ServerConn, accepted: bool) -> None:
        if accepted:
            self._out.append(StartTls("server", s.sid))
        elif self.config.general.verify_server_certificate:
            self._server_gone(
                s,
                fatal(
                    "08001",
                    f"server {self._where(s)} does not accept TLS, and "
                    "verify_server_certificate is set",
                ),
            )
        else:
            self._send_startup(s)  # PgCat: a server without TLS is used in clear

    def _server_tls_done(self, s: ServerConn, error: str | None) -> None:
        if s.state is not ServerState.LOGIN:
            return
        if error is not None:
            where = self._where(s)
            self._log(logging.WARNING, f"server {where}: TLS failed: {error}")
            self._server_gone(
                s, fatal("08001", f"TLS with server {where} failed: {error}"), closed=True
            )
            return
        s.tls = True
        self._send_startup(s)
