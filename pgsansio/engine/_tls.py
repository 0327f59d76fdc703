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

from pgsansio.protocol import SSLRequest, SSLResponse, StartupMessage

from ._effects import StartTls
from ._errors import ClientFatal, fatal
from ._objects import P_AUTH_QUERY, P_CANCEL
from ._states import S_LOGIN

if TYPE_CHECKING:
    from ._context import Context
    from ._objects import Client, ServerConn

__all__ = ["Tls"]

_TLS_REQUIRED = ("require", "verify-ca", "verify-full")


class Tls:
    """Owns nothing but the decisions; see the module docstring."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- clients --------------------------------------------------------------------

    def client_ssl_request(self, c: Client) -> bool:
        """Answer a client's SSLRequest: ``S`` and StartTls (True), or ``N``."""
        general = self.ctx.config.general
        if general.tls_certificate is None or general.client_tls_sslmode == "disable":
            self.ctx.send_client(c, SSLResponse(False))
            return False
        # Raises RemoteProtocolError if the client sent more after its request.
        self.ctx.send_client(c, SSLResponse(True))
        self.ctx.out.append(StartTls("client", c.cid))
        return True

    def client_tls_done(self, c: Client, error: str | None) -> bool:
        """Whether the client's TLS is up, so that what it sent next can be read."""
        if error is not None:
            self.ctx.log(logging.INFO, f"client {c.cid} from {c.peer}: TLS failed: {error}")
            self.ctx.drop_client(c, None, closed=True)
            return False
        c.tls = True
        return True

    def check_client_tls(self, c: Client) -> None:
        """Refuse a StartupMessage in clear when the mode requires TLS."""
        if not c.tls and self.ctx.config.general.client_tls_sslmode in _TLS_REQUIRED:
            raise ClientFatal(
                "28000",
                "SSL required: this pooler only accepts encrypted connections "
                "(connect with sslmode=require or stronger)",
            )

    # --- servers --------------------------------------------------------------------

    def server_ssl_request(self, s: ServerConn) -> bool:
        """Start a server login with an SSLRequest if ``server_tls``; whether it did."""
        if not self.ctx.config.general.server_tls or s.purpose == P_CANCEL:
            return False
        self.ctx.send_server(s, s.conn.send(SSLRequest()))
        return True

    def server_ssl_answer(self, s: ServerConn, accepted: bool) -> None:
        if accepted:
            self.ctx.out.append(StartTls("server", s.sid))
        elif self.ctx.config.general.verify_server_certificate:
            self.ctx.server_gone(
                s,
                fatal(
                    "08001",
                    f"server {self.ctx.where(s)} does not accept TLS, and "
                    "verify_server_certificate is set",
                ),
            )
        else:
            self.send_startup(s)  # PgCat: a server without TLS is used in clear

    def server_tls_done(self, s: ServerConn, error: str | None) -> None:
        if s.state is not S_LOGIN:
            return
        if error is not None:
            where = self.ctx.where(s)
            self.ctx.log(logging.WARNING, f"server {where}: TLS failed: {error}")
            self.ctx.server_gone(
                s, fatal("08001", f"TLS with server {where} failed: {error}"), closed=True
            )
            return
        s.tls = True
        self.send_startup(s)

    def send_startup(self, s: ServerConn) -> None:
        group = s.group
        assert group is not None
        if s.purpose == P_AUTH_QUERY:
            user_name = group.cfg.auth_query_user or ""
            database = group.cfg.shards[0].database
        else:
            assert s.pool is not None
            user_name = group.user.backend_username
            database = group.cfg.shards[s.pool.shard].database
        params = {"user": user_name, "database": database}
        cfg = group.cfg
        for name, value in (
            ("client_encoding", cfg.client_encoding),
            ("DateStyle", cfg.datestyle),
            ("TimeZone", cfg.timezone),
        ):
            if value is not None:  # PgBouncer's per-database server settings
                params[name] = value
        startup = StartupMessage(params)
        self.ctx.send_server(s, s.conn.send(startup))
