"""Drive a ``Connection`` over untrusted bytes and check h11's fuzzing invariant.

Shared by the atheris harnesses (and usable from a plain REPL to replay a crash
file): the harnesses only pick a role and hand the fuzzed bytes to :func:`check`.

The invariant, as in h11's AFL harness: whatever the bytes, the connection
either parses them or raises :class:`pgsansio.RemoteProtocolError`. We also
check what a proxy relies on besides not crashing:

* the same bytes fed whole and byte by byte give the same events and the same
  error (framing must not depend on how ``recv()`` split the stream);
* the events re-encode to exactly the bytes they were read from;
* ``next_span`` forwards exactly the bytes read, reports the same non-bulk
  events as ``next_event`` and only skips what ``next_event`` would decode;
* the connection never holds more than one partial message of at most
  ``max_message_size`` bytes (a length header alone must not make it wait for,
  or allocate, a gigabyte);
* after an error it fails fast.

The first input byte is a selector (see :class:`Scenario`) so one harness
covers several starting phases; the rest is the peer's byte stream, always
followed by EOF.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Final

import pgsansio as pg

__all__ = ["MAX_MESSAGE_SIZE", "Scenario", "check", "selector"]

#: The harnesses' message cap: small enough that "never buffer more than this"
#: is a real constraint, large enough for every real message in the corpus.
MAX_MESSAGE_SIZE: Final = 1 << 20
#: With the selector's bit 7 set: so that fuzzed inputs reach the limit too.
SMALL_MESSAGE_SIZE: Final = 512
#: Requests the client side has outstanding when the query phase starts.
PIPELINE: Final = 32

USER: Final = "fuzz"
PASSWORD: Final = "pencil"
#: Fixed SCRAM nonces make runs reproducible, and let seeds carry valid proofs.
CLIENT_NONCE: Final = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE: Final = "3rfcNHYJY1ZVvWVs7j"
SCRAM_SALT: Final = b"0123456789abcdef"
SCRAM_ITERATIONS: Final = 16
MD5_SALT: Final = b"\x01\x02\x03\x04"

CLIENT_VARIANTS: Final = ("auth", "simple", "extended", "mixed")
SERVER_VARIANTS: Final = ("startup", "query", "copy_in", "failed_extended")
AUTH_METHODS: Final = ("trust", "password", "md5", "scram")

# The bulk messages next_span frames without decoding, per role.
_BULK: Final = {pg.CLIENT: (pg.DataRow, pg.CopyData), pg.SERVER: (pg.CopyData,)}
_VERIFIER: Final = pg.ScramVerifier.from_password(
    PASSWORD, salt=SCRAM_SALT, iterations=SCRAM_ITERATIONS
)


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """Where the connection under test starts, decoded from the selector byte.

    Bits 0-1 pick the variant (``CLIENT_VARIANTS`` / ``SERVER_VARIANTS``);
    bits 2-3 the authentication a server-role connection asks for, or for a
    client-role one, bit 2 asks for protocol 3.2 (long cancel keys); bit 7
    sets a 512-byte ``max_message_size`` instead of 1 MiB.
    """

    role: pg.Role
    variant: str
    auth: str
    max_message_size: int
    protocol: int = pg.PROTOCOL_3_0

    @classmethod
    def from_byte(cls, role: pg.Role, byte: int) -> Scenario:
        size = SMALL_MESSAGE_SIZE if byte & 0x80 else MAX_MESSAGE_SIZE
        if role is pg.CLIENT:
            protocol = pg.PROTOCOL_3_2 if byte & 4 else pg.PROTOCOL_3_0
            return cls(role, CLIENT_VARIANTS[byte & 3], "trust", size, protocol)
        return cls(role, SERVER_VARIANTS[byte & 3], AUTH_METHODS[(byte >> 2) & 3], size)


def selector(
    role: pg.Role,
    variant: str,
    auth: str = "trust",
    *,
    small: bool = False,
    protocol: int = pg.PROTOCOL_3_0,
) -> int:
    """The selector byte for a scenario: what seed files start with."""
    if role is pg.CLIENT:
        index = CLIENT_VARIANTS.index(variant) | (4 if protocol == pg.PROTOCOL_3_2 else 0)
    else:
        index = SERVER_VARIANTS.index(variant) | AUTH_METHODS.index(auth) << 2
    return index | (0x80 if small else 0)


def requests(variant: str) -> Iterator[pg.Event]:
    """What a client-role connection has sent when its query phase starts.

    The state machine refuses replies nobody asked for, so without requests
    in flight the fuzzer could not get past the first RowDescription.
    ``mixed`` (also used after ``auth``) interleaves every kind of request,
    including a batch ended by Flush rather than Sync.
    """
    for i in range(PIPELINE):
        kind = variant if variant in ("simple", "extended") else _MIXED[i % len(_MIXED)]
        if kind == "simple":
            yield pg.Query("select 1")
        elif kind == "copy":
            yield pg.Query("copy t from stdin")
        elif kind == "call":
            yield pg.FunctionCall(1598, (), (), 0)
        else:
            yield pg.Parse("", "select $1::int", (23,))
            yield pg.Bind("", "", (), (b"1",), (1,))
            yield pg.Describe("P", "")
            yield pg.Execute("", 0)
            yield pg.Flush() if kind == "batch" else pg.Sync()


_MIXED: Final = ("simple", "extended", "simple", "batch", "simple", "copy", "simple", "call")


class Peer:
    """The connection under test plus the scripted side that talks back.

    Reactions happen only during startup, where ``next_span`` returns one
    message at a time, so every feeding mode reacts at the same points and
    their results stay comparable.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.conn = pg.Connection(scenario.role, max_message_size=scenario.max_message_size)
        self.requested = False
        self.scram_client_started = False
        self.scram_client_answered = False
        self.scram_client_verified = False
        self.scram_client = pg.ScramClient(
            PASSWORD, nonce=CLIENT_NONCE, max_iterations=4096, username=""
        )
        self.scram_server = pg.ScramServer(_VERIFIER, nonce=SERVER_NONCE)
        if scenario.role is pg.CLIENT:
            self._setup_client()
        else:
            self._setup_server()

    # --- setting up the starting phase --------------------------------------------------

    def _feed_ours(self, *events: pg.Event) -> None:
        """Have the peer say ``events`` before the fuzzed bytes (setup only)."""
        self.conn.receive_data(b"".join(bytes(e) for e in events))
        for _ in events:
            event = self.conn.next_event()
            assert isinstance(event, pg.Event), event

    def _setup_client(self) -> None:
        startup = pg.StartupMessage({"user": USER, "database": USER}, self.scenario.protocol)
        self.conn.send(startup)
        if self.scenario.variant != "auth":
            self._feed_ours(pg.AuthenticationOk(), pg.ReadyForQuery("I"))
            self._send_requests()

    def _setup_server(self) -> None:
        variant = self.scenario.variant
        if variant == "startup":
            return
        self._feed_ours(pg.StartupMessage({"user": USER}))
        self._send_ready()
        if variant == "copy_in":
            self._feed_ours(pg.Query("copy t from stdin"))
            self.conn.send(pg.CopyInResponse(0, ()))
        elif variant == "failed_extended":
            self._feed_ours(pg.Parse("", "select 1/0"), pg.Bind("", ""), pg.Execute())
            self.conn.send(pg.ErrorResponse([("S", "ERROR"), ("C", "22012"), ("M", "boom")]))

    def _send_requests(self) -> None:
        self.requested = True
        for event in requests(self.scenario.variant):
            self.conn.send(event)

    def _send_ready(self) -> None:
        for event in (
            pg.AuthenticationOk(),
            pg.ParameterStatus("server_version", "15.18"),
            pg.BackendKeyData(4242, b"k3y!"),
            pg.ReadyForQuery("I"),
        ):
            self.conn.send(event)

    # --- reactions ----------------------------------------------------------------------

    def on_paused(self) -> None:
        """The client waits for our answer to SSLRequest/GSSENCRequest: refuse."""
        if self.conn.state is pg.State.SSL_NEGOTIATION:
            self.conn.send(pg.SSLResponse(False))
        else:
            self.conn.send(pg.GSSENCResponse(False))

    def on_event(self, event: pg.Event) -> None:
        if self.scenario.role is pg.CLIENT:
            self._client_reacts(event)
        else:
            self._server_reacts(event)

    def _client_reacts(self, event: pg.Event) -> None:
        send = self.conn.send
        kind = type(event)
        if kind is pg.AuthenticationCleartextPassword:
            send(pg.PasswordMessage(PASSWORD))
        elif isinstance(event, pg.AuthenticationMD5Password):
            send(pg.PasswordMessage(pg.md5_response(USER, PASSWORD, event.salt)))
        elif isinstance(event, pg.AuthenticationSASL):
            if "SCRAM-SHA-256" in event.mechanisms and not self.scram_client_started:
                self.scram_client_started = True
                send(pg.SASLInitialResponse("SCRAM-SHA-256", self.scram_client.client_first()))
        elif isinstance(event, pg.AuthenticationSASLContinue):
            if self.scram_client_started and not self.scram_client_answered:
                self.scram_client_answered = True
                send(pg.SASLResponse(self.scram_client.client_final(event.data)))
        elif isinstance(event, pg.AuthenticationSASLFinal):
            if self.scram_client_answered and not self.scram_client_verified:
                self.scram_client_verified = True
                self.scram_client.verify_server_final(event.data)
        elif kind in (pg.AuthenticationGSS, pg.AuthenticationSSPI, pg.AuthenticationGSSContinue):
            send(pg.GSSResponse(b"token"))
        elif kind is pg.ReadyForQuery and not self.requested:
            self._send_requests()

    def _server_reacts(self, event: pg.Event) -> None:
        send = self.conn.send
        if isinstance(event, pg.StartupMessage):
            auth = self.scenario.auth
            if auth == "trust":
                self._send_ready()
            elif auth == "password":
                send(pg.AuthenticationCleartextPassword())
            elif auth == "md5":
                send(pg.AuthenticationMD5Password(MD5_SALT))
            else:
                send(pg.AuthenticationSASL(["SCRAM-SHA-256"]))
        elif isinstance(event, pg.PasswordMessage):
            self._send_ready()
        elif isinstance(event, pg.SASLInitialResponse):
            if event.mechanism != "SCRAM-SHA-256" or event.data is None:
                send(_fatal("28000", "unsupported SASL mechanism"))
            else:
                send(pg.AuthenticationSASLContinue(self.scram_server.server_first(event.data)))
        elif isinstance(event, pg.SASLResponse):
            try:
                final = self.scram_server.server_final(event.data)
            except pg.AuthenticationFailed:
                send(_fatal("28P01", "password authentication failed"))
                return
            send(pg.AuthenticationSASLFinal(final))
            self._send_ready()


def _fatal(sqlstate: str, message: str) -> pg.ErrorResponse:
    return pg.ErrorResponse([("S", "FATAL"), ("V", "FATAL"), ("C", sqlstate), ("M", message)])


# --- feeding ------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one feeding mode made of the stream."""

    events: list[pg.Event]
    error: BaseException | None = None
    consumed: bytes = b""  # next_span mode: the forwarded bytes, joined
    bulk: int = 0  # next_span mode: messages forwarded undecoded

    def error_key(self) -> tuple[str, str, str] | None:
        if self.error is None:
            return None
        return (type(self.error).__name__, getattr(self.error, "sqlstate", ""), str(self.error))


# What a peer may make us raise: the connection's verdict, or the SCRAM layer's
# (a wrong proof is AuthenticationFailed, by design not a protocol error).
_EXPECTED = (pg.RemoteProtocolError, pg.AuthenticationFailed)


def _check_bound(conn: pg.Connection) -> None:
    """After NEED_DATA at most one partial message is buffered, within the cap.

    A partial message is shorter than its length word says, and that word was
    checked against the cap, so the buffer can never exceed the cap. Reads
    private attributes: ``trailing_data`` copies, which would make the
    byte-by-byte run quadratic.
    """
    unread = len(conn._data) - conn._pos
    startup = conn.role is pg.SERVER and conn.state is pg.State.STARTUP
    limit = conn.max_startup_size if startup else conn.max_message_size
    assert unread <= limit, f"{unread} bytes buffered, over the {limit}-byte limit"


def _after_error(peer: Peer, exc: BaseException) -> None:
    """A connection that raised stays failed, like h11's."""
    conn = peer.conn
    if not isinstance(exc, pg.RemoteProtocolError) or conn.state is not pg.State.ERROR:
        return  # the SCRAM layer raised; the connection itself is fine
    assert len(exc.sqlstate) == 5, exc.sqlstate
    for call in (conn.next_event, conn.next_span):
        try:
            call()
        except pg.RemoteProtocolError:
            pass
        else:
            raise AssertionError(f"{call.__name__} did not fail after a protocol error")
    try:
        conn.send(pg.Sync() if conn.role is pg.CLIENT else pg.ReadyForQuery("I"))
    except pg.LocalProtocolError:
        pass
    else:
        raise AssertionError("send did not fail after a protocol error")


def feed_events(scenario: Scenario, chunks: list[bytes]) -> Outcome:
    """``receive_data`` each chunk, then EOF, reading with ``next_event``."""
    peer = Peer(scenario)
    conn = peer.conn
    out = Outcome([])
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            paused = False
            while True:
                event = conn.next_event()
                if event is pg.NEED_DATA:
                    _check_bound(conn)
                    break
                if event is pg.PAUSED:
                    assert not paused, "PAUSED twice: the answer did not unpause"
                    paused = True
                    peer.on_paused()
                    continue
                paused = False
                assert isinstance(event, pg.Event)
                out.events.append(event)
                if type(event) is pg.ConnectionClosed:
                    return out
                peer.on_event(event)
    except _EXPECTED as exc:
        _after_error(peer, exc)
        out.error = exc
        return out
    raise AssertionError("EOF was fed but next_event never returned ConnectionClosed")


def feed_spans(scenario: Scenario, chunks: list[bytes]) -> Outcome:
    """Like :func:`feed_events`, reading with the proxy fast path ``next_span``."""
    peer = Peer(scenario)
    conn = peer.conn
    out = Outcome([])
    parts: list[bytes] = []
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                span = conn.next_span()
                if span is pg.NEED_DATA:
                    _check_bound(conn)
                    break
                if span is pg.PAUSED:
                    peer.on_paused()
                    continue
                if type(span) is pg.ConnectionClosed:
                    out.events.append(span)
                    return out
                assert isinstance(span, pg.Span), span
                assert span.data, "an empty span"
                assert len(span.offsets) == len(span.events)
                for offset, event in zip(span.offsets, span.events, strict=True):
                    wire = bytes(event)
                    assert span.data[offset : offset + len(wire)] == wire, (offset, event)
                parts.append(bytes(span.data))
                out.bulk += span.bulk
                for event in span.events:
                    out.events.append(event)
                    peer.on_event(event)
    except _EXPECTED as exc:
        _after_error(peer, exc)
        out.error = exc
    finally:
        out.consumed = b"".join(parts)
    if out.error is None:
        raise AssertionError("EOF was fed but next_span never returned ConnectionClosed")
    return out


def _random_chunks(data: bytes) -> list[bytes]:
    """Split points drawn from the input itself, so a crash file replays exactly."""
    rng = random.Random(zlib.crc32(data))
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, 4, 5, 7, 64, 1000, 4096, len(data)))
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def _wire(events: list[pg.Event]) -> bytes:
    return b"".join(bytes(e) for e in events if type(e) is not pg.ConnectionClosed)


def check(
    role: pg.Role, data: bytes, *, split: Callable[[bytes], list[bytes]] | None = None
) -> None:
    """Run one input through every feeding mode and assert the invariants.

    Args:
        role: the role of the connection under test.
        data: selector byte, then the peer's bytes.
        split: how to chunk the stream for the ``next_span`` run; by default
            split points derived from the data.

    Raises:
        AssertionError: an invariant broke. Any exception other than the
            expected ones propagates too: for the fuzzer both are crashes.
    """
    if not data:
        return
    scenario = Scenario.from_byte(role, data[0])
    stream = data[1:]
    whole = feed_events(scenario, [stream] if stream else [])
    bytewise = feed_events(scenario, [stream[i : i + 1] for i in range(len(stream))])
    spans = feed_spans(scenario, (split or _random_chunks)(stream))

    # Framing must not depend on chunking.
    assert whole.events == bytewise.events, "whole and byte-by-byte events differ"
    assert whole.error_key() == bytewise.error_key(), (whole.error_key(), bytewise.error_key())

    # Events re-encode to the bytes they came from.
    wire = _wire(whole.events)
    assert stream.startswith(wire), "events do not re-encode to the received bytes"
    if whole.error is None:
        assert wire == stream, "stream read to EOF but events do not cover it"

    # next_span forwards exactly what it read, and agrees with next_event.
    assert stream.startswith(spans.consumed), "a span holds bytes that were not received"
    bulk = _BULK[role]
    decoded = [e for e in whole.events if type(e) not in bulk]
    if whole.error is None:
        assert spans.error is None, f"next_span raised where next_event did not: {spans.error!r}"
        assert spans.consumed == stream
        assert spans.events == decoded, "next_span and next_event events differ"
        assert spans.bulk == len(whole.events) - len(decoded)
    elif spans.error is None:
        # next_span frames DataRows without decoding their columns: the only
        # thing it may let through is a malformed DataRow body.
        assert role is pg.CLIENT and str(whole.error).startswith("malformed DataRow"), (
            f"next_event raised {whole.error!r} but next_span accepted the stream"
        )
    else:
        n = min(len(decoded), len(spans.events))
        assert spans.events[:n] == decoded[:n], "next_span and next_event events differ"
