"""The engine's half of TLS: SSLRequest answers, StartTls, and what follows either way.

The handshakes themselves are the frontend's (tests/test_tls.py does them for real);
here the world stands in for a frontend whose handshakes succeed or fail on demand, in
front of :mod:`pgsansio.testing.fakepg` servers (which speak in clear once "encrypted").
"""

from __future__ import annotations

from typing import Any

from test_engine import DB, World, config, errors, logged_in, ready

from pgsansio.engine import Effect, Engine, StartTls
from pgsansio.protocol import (
    CLIENT,
    NEED_DATA,
    AuthenticationOk,
    Connection,
    ConnectionClosed,
    Event,
    GSSENCRequest,
    GSSENCResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from pgsansio.testing.fakepg import FakeServer

SSL_REQUEST = bytes(SSLRequest())


class TlsWorld(World):
    """A World whose frontend carries out StartTls, and whose servers may accept TLS.

    ``server_answer``: what a server says to an SSLRequest (b"S", b"N", or b"S" plus
    injected bytes). ``tls_error``: the handshake outcome reported to the engine (None
    = success). StartTls is carried out as soon as the engine asks, as a frontend would
    once the handshake is over.
    """

    def __init__(self, cfg: object, *, server_answer: bytes = b"S") -> None:
        self.server_answer = server_answer
        self.tls_error: str | None = None
        self.started: list[StartTls] = []
        super().__init__(cfg)  # type: ignore[arg-type]
        self.engine = _Handshaking(self.engine, self)  # type: ignore[assignment]
        connect = self.db.connect

        def connect_answering_ssl(now: float = 0.0) -> FakeServer:
            fake = connect(now)
            receive = fake.receive

            def answer(data: bytes, now: float) -> bytes:
                return self.server_answer if data == SSL_REQUEST else receive(data, now)

            fake.receive = answer  # type: ignore[method-assign]
            return fake

        self.db.connect = connect_answering_ssl  # type: ignore[method-assign]


class _Handshaking:
    """The engine, with every StartTls it returns carried out on the spot."""

    def __init__(self, engine: Engine, world: TlsWorld) -> None:
        self._engine = engine
        self._world = world

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any) -> list[Effect]:
            return self._expand(attr(*args))

        return call

    def _expand(self, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        world = self._world
        for e in effects:
            if not isinstance(e, StartTls):
                out.append(e)
                continue
            world.started.append(e)
            if e.kind == "client":
                out += self._expand(self._engine.client_tls(e.id, world.tls_error, world.now))
            else:
                if world.tls_error is not None:
                    world.servers.pop(e.id, None)  # the frontend closed it
                out += self._expand(self._engine.server_tls(e.id, world.tls_error, world.now))
        return out


class TlsClient:
    """A client that may ask for TLS before its StartupMessage."""

    def __init__(self, world: World) -> None:
        self.world = world
        world._next_cid += 1
        self.cid = world._next_cid
        self.conn = Connection(CLIENT)
        world.apply(world.engine.client_connected(self.cid, "test", world.now))

    def send(self, *events: Event) -> None:
        data = b"".join(self.conn.send(e) for e in events)
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        self.world.apply(self.world.engine.client_data(self.cid, data, self.world.now))

    def events(self) -> list[Event]:
        buf = self.world.inbox.pop(self.cid, bytearray())
        if buf:
            self.conn.receive_data(bytes(buf))
        if self.cid in self.world.closed_clients:
            self.conn.receive_data(b"")
        out: list[Event] = []
        while True:
            e = self.conn.next_event()
            if e is NEED_DATA:
                return out
            assert isinstance(e, Event)
            out.append(e)
            if isinstance(e, ConnectionClosed):
                return out

    def login(self) -> list[Event]:
        self.send(StartupMessage({"user": "alice", "database": DB}))
        return self.events()


def tls_config(**kw: object) -> object:
    return config(general_tls_certificate="cert.pem", general_tls_private_key="key.pem", **kw)


# --- clients -------------------------------------------------------------------------


def test_ssl_request_with_a_certificate_is_accepted_then_the_login_goes_on() -> None:
    w = TlsWorld(tls_config())  # the default mode with a certificate: prefer
    c = TlsClient(w)
    c.send(SSLRequest())
    assert c.events() == [SSLResponse(True)]
    assert w.started == [StartTls("client", c.cid)]
    assert w.engine.clients[c.cid].tls
    got = c.login()
    assert any(isinstance(e, AuthenticationOk) for e in got) and ready(got) == ["I"]


def test_prefer_still_serves_clients_in_clear() -> None:
    w = TlsWorld(tls_config())
    logged_in(w)
    assert w.started == []


def test_without_a_certificate_ssl_and_gss_requests_get_n() -> None:
    w = TlsWorld(config())
    c = TlsClient(w)
    c.send(SSLRequest())
    assert c.events() == [SSLResponse(False)]
    c.send(GSSENCRequest())
    assert c.events() == [GSSENCResponse(False)]
    assert ready(c.login()) == ["I"]
    assert w.started == []


def test_disable_answers_n_even_with_a_certificate() -> None:
    w = TlsWorld(tls_config(general_client_tls_sslmode="disable"))
    c = TlsClient(w)
    c.send(SSLRequest())
    assert c.events() == [SSLResponse(False)]
    assert w.started == []


def test_require_refuses_a_client_in_clear_with_28000() -> None:
    w = TlsWorld(tls_config(general_client_tls_sslmode="require"))
    c = TlsClient(w)
    got = c.login()
    (error,) = errors(got)
    assert (error.sqlstate, error.severity) == ("28000", "FATAL")
    assert "SSL required" in error.message
    assert isinstance(got[-1], ConnectionClosed)
    encrypted = TlsClient(w)
    encrypted.send(SSLRequest())
    assert encrypted.events() == [SSLResponse(True)]
    assert ready(encrypted.login()) == ["I"]


def test_plaintext_after_the_ssl_request_is_refused() -> None:
    """CVE-2021-23214: bytes sent with the SSLRequest were never encrypted."""
    w = TlsWorld(tls_config())
    c = TlsClient(w)
    startup = bytes(StartupMessage({"user": "alice", "database": DB}))
    c.send_raw(SSL_REQUEST + startup)
    assert w.started == []
    assert c.cid in w.closed_clients
    inbox = bytes(w.inbox.get(c.cid, b""))
    assert inbox[:1] == b"E"  # an error, and no S: the handshake never starts
    assert b"C08P01\0" in inbox and b"unencrypted data" in inbox


def test_failed_client_handshake_forgets_the_client() -> None:
    w = TlsWorld(tls_config())
    w.tls_error = "certificate verify failed"
    c = TlsClient(w)
    c.send(SSLRequest())
    assert w.started == [StartTls("client", c.cid)]
    assert c.cid not in w.engine.clients
    assert c.cid not in w.closed_clients  # the frontend closed it; no CloseClient
    assert any("TLS failed: certificate verify failed" in line for line in w.logs)


# --- servers -------------------------------------------------------------------------


def test_server_tls_asks_first_then_logs_in_over_tls() -> None:
    w = TlsWorld(config(general_server_tls=True))
    c = logged_in(w)
    assert [e.kind for e in w.started] == ["server"]
    (server,) = w.engine.servers.values()
    assert server.tls
    assert ready(c.query("select 1")) == ["I"]


def test_server_without_tls_is_used_in_clear_like_pgcat() -> None:
    w = TlsWorld(config(general_server_tls=True), server_answer=b"N")
    logged_in(w)
    assert w.started == []
    (server,) = w.engine.servers.values()
    assert not server.tls


def test_verify_server_certificate_refuses_a_server_without_tls() -> None:
    w = TlsWorld(
        config(general_server_tls=True, general_verify_server_certificate=True),
        server_answer=b"N",
    )
    c = TlsClient(w)
    (error,) = errors(c.login())
    assert error.sqlstate == "08001"
    assert "does not accept TLS" in error.message


def test_failed_server_handshake_fails_the_login_with_08001() -> None:
    w = TlsWorld(config(general_server_tls=True))
    w.tls_error = "hostname mismatch"
    c = TlsClient(w)
    (error,) = errors(c.login())
    assert error.sqlstate == "08001"
    assert "TLS with server" in error.message and "hostname mismatch" in error.message
    assert not w.engine.servers


def test_plaintext_injected_after_the_servers_s_is_refused() -> None:
    """CVE-2021-23222: bytes that came with the S were not encrypted by the server."""
    w = TlsWorld(config(general_server_tls=True), server_answer=b"S" + b"R\0\0\0\x08\0\0\0\0")
    c = TlsClient(w)
    got = c.login()
    assert w.started == []
    (error,) = errors(got)
    assert error.sqlstate == "08P01"
