"""Seed inputs for the harnesses: real traffic, our own encodings, and known bug shapes.

A fuzzer mutating valid conversations gets far deeper than one starting from
nothing: a mutated length in the middle of a real result set exercises the
query phase, random bytes never leave the startup packet. So every seed is a
whole, valid (or deliberately broken) byte stream of one direction, prefixed
with the selector byte of the starting phase it belongs to (see ``_drive``).

Sources:

* the recorded corpus, ``tests/corpus/*/c*.jsonl[.gz]`` (read with
  :func:`pgsansio.conformance.trace.read_trace`), cut into its startup and query phases;
* conversations built from our own events, covering every message type,
  every authentication method with valid SCRAM proofs, COPY and pipelining;
* the malformed messages behind real CVEs and bugs in other poolers
  (reference/protocol.md section 5).

``python fuzz/seeds.py OUTDIR`` writes them as files, one directory per
harness; ``fuzz/run.py`` does this before every run.
"""

from __future__ import annotations

import hashlib
import pathlib
import struct
import sys
from collections.abc import Iterator

import pgsansio as pg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _drive

__all__ = ["MAX_LEN", "all_seeds", "write_seeds"]

#: libFuzzer's -max_len; seeds longer than this are cut (the 10 MB result set too).
MAX_LEN = 65536
ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"

_i16 = struct.Struct("!h").pack
_i32 = struct.Struct("!i").pack
_u32 = struct.Struct("!I").pack
_SSL_OR_GSS = (80877103, 80877104)
_CANCEL = 80877102


def _msg(code: bytes, body: bytes) -> bytes:
    """A typed message with the length computed (or faked, see callers)."""
    return code + _i32(len(body) + 4) + body


def _wire(*events: pg.Event) -> bytes:
    return b"".join(bytes(e) for e in events)


def _seed(
    role: pg.Role,
    variant: str,
    stream: bytes,
    auth: str = "trust",
    protocol: int = pg.PROTOCOL_3_0,
) -> bytes:
    return bytes([_drive.selector(role, variant, auth, protocol=protocol)]) + stream[: MAX_LEN - 1]


# --- our own conversations ----------------------------------------------------------------


def _rows(n: int, width: int = 100) -> bytes:
    desc = pg.RowDescription([pg.Field("id", 0, 0, 23, 4, -1, 0), pg.Field("v")])
    rows = (pg.DataRow([str(i).encode(), b"x" * (width - 20)]) for i in range(n))
    return _wire(desc, *rows, pg.CommandComplete(f"SELECT {n}"))


def _scram_exchange() -> tuple[bytes, bytes, bytes, bytes]:
    """client-first, server-first, client-final, server-final, all valid.

    Both sides use the harness's fixed nonces, salt and password, so the
    seeds get through authentication into the query phase.
    """
    client = pg.ScramClient(_drive.PASSWORD, nonce=_drive.CLIENT_NONCE)
    server = pg.ScramServer(_drive._VERIFIER, nonce=_drive.SERVER_NONCE)
    first = client.client_first()
    server_first = server.server_first(first)
    final = client.client_final(server_first)
    server_final = server.server_final(final)
    return first, server_first, final, server_final


def _ready() -> bytes:
    return _wire(
        pg.AuthenticationOk(),
        pg.ParameterStatus("client_encoding", "UTF8"),
        pg.ParameterStatus("server_version", "15.18"),
        pg.BackendKeyData(4242, b"k3y!"),
        pg.ReadyForQuery("I"),
    )


def _backend_query_phase() -> dict[str, bytes]:
    """Server replies to the client harness's request pipeline (``_drive.requests``)."""
    ext_ok = _wire(pg.ParseComplete(), pg.BindComplete()) + _rows(3)
    error = _wire(pg.ErrorResponse([("S", "ERROR"), ("V", "ERROR"), ("C", "22012"), ("M", "x")]))
    return {
        "simple": _rows(5)
        + _wire(pg.ReadyForQuery("I"))
        + _rows(0)
        + _wire(pg.ReadyForQuery("T")),
        "simple-error": error + _wire(pg.ReadyForQuery("E")),
        "simple-empty": _wire(pg.EmptyQueryResponse(), pg.ReadyForQuery("I")),
        "simple-async": _wire(
            pg.NoticeResponse([("S", "NOTICE"), ("C", "00000"), ("M", "hi")]),
            pg.CommandComplete("SET"),
            pg.ParameterStatus("TimeZone", "UTC"),
            pg.NotificationResponse(4242, "chan", "payload"),
            pg.ReadyForQuery("I"),
        ),
        "copy-in": _wire(pg.CopyInResponse(0, (0, 0)), pg.CommandComplete("COPY 2"))
        + _wire(pg.ReadyForQuery("I")),
        "copy-out": _wire(
            pg.CopyOutResponse(0, (0,)),
            pg.CopyData(b"1\tone\n"),
            pg.CopyData(b"2\ttwo\n"),
            pg.CopyDone(),
            pg.CommandComplete("COPY 2"),
            pg.ReadyForQuery("I"),
        ),
        "extended": ext_ok + _wire(pg.ReadyForQuery("I")),
        "extended-describe": _wire(
            pg.ParseComplete(),
            pg.ParameterDescription((23, 25)),
            pg.NoData(),
            pg.BindComplete(),
            pg.PortalSuspended(),
            pg.CloseComplete(),
            pg.ReadyForQuery("I"),
        ),
        "extended-error": _wire(pg.ParseComplete()) + error + _wire(pg.ReadyForQuery("I")),
        "call": _wire(pg.FunctionCallResponse(b"\x00\x00\x00\x01"), pg.ReadyForQuery("I")),
        "call-null": _wire(pg.FunctionCallResponse(None), pg.ReadyForQuery("I")),
        "copy-both": _wire(pg.CopyBothResponse(0, ()), pg.CopyData(b"w" + bytes(24) + b"wal")),
        "big-row": _wire(
            pg.RowDescription([pg.Field("blob")]),
            pg.DataRow([b"y" * 40000, None]),
            pg.CommandComplete("SELECT 1"),
            pg.ReadyForQuery("I"),
        ),
        "fatal-at-idle": _wire(
            pg.ErrorResponse([("S", "FATAL"), ("C", "57P01"), ("M", "terminating connection")])
        ),
    }


def own_client_seeds() -> Iterator[tuple[str, bytes]]:
    """Backend streams, for the CLIENT-role harness."""
    c = pg.CLIENT
    query = _backend_query_phase()
    ready = _ready()
    _, server_first, _, server_final = _scram_exchange()
    auths = {
        "trust": b"",
        "password": _wire(pg.AuthenticationCleartextPassword()),
        "md5": _wire(pg.AuthenticationMD5Password(_drive.MD5_SALT)),
        "scram": _wire(
            pg.AuthenticationSASL(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
            pg.AuthenticationSASLContinue(server_first),
            pg.AuthenticationSASLFinal(server_final),
        ),
        "gss": _wire(
            pg.AuthenticationGSS(), pg.AuthenticationGSSContinue(b"tok"), pg.AuthenticationSSPI()
        ),
        "npv": _wire(pg.NegotiateProtocolVersion(pg.PROTOCOL_3_0, ["_pq_.x"])),
        "notice": _wire(pg.NoticeResponse([("S", "WARNING"), ("M", "w")])),
    }
    for name, auth in auths.items():
        yield f"auth-{name}", _seed(c, "auth", auth + ready + query["simple"])
    long_key = _ready().replace(
        bytes(pg.BackendKeyData(4242, b"k3y!")), bytes(pg.BackendKeyData(4242, b"k" * 32))
    )
    yield "auth-3.2-long-key", _seed(c, "auth", long_key, protocol=pg.PROTOCOL_3_2)
    yield "auth-fatal", _seed(c, "auth", _wire(_drive._fatal("28P01", "bad password")))
    yield "auth-kerberos", _seed(c, "auth", _wire(pg.AuthenticationKerberosV5()))
    for name, stream in query.items():
        variant = "extended" if name.startswith("extended") else "mixed"
        if name.startswith("simple"):
            variant = "simple"
        yield f"query-{name}", _seed(c, variant, stream)
    yield "query-all", _seed(c, "mixed", b"".join(query.values()))
    yield "query-rows-1000", _seed(c, "simple", _rows(1000) + _wire(pg.ReadyForQuery("I")))


def own_server_seeds() -> Iterator[tuple[str, bytes]]:
    """Frontend streams, for the SERVER-role harness."""
    s = pg.SERVER
    startup = _wire(pg.StartupMessage({"user": _drive.USER, "database": "db"}))
    first, _, final, _ = _scram_exchange()
    md5 = pg.md5_response(_drive.USER, _drive.PASSWORD, _drive.MD5_SALT)
    query = _wire(
        pg.Query("select 1; select 2"),
        pg.Parse("s1", "select $1::int, $2::text", (23, 25)),
        pg.Bind("p1", "s1", (0, 1), (b"1", None), (1,)),
        pg.Describe("S", "s1"),
        pg.Describe("P", "p1"),
        pg.Execute("p1", 10),
        pg.Close("P", "p1"),
        pg.Close("S", "s1"),
        pg.Flush(),
        pg.Sync(),
        pg.FunctionCall(1598, (1,), (b"\x00\x00\x00\x01", None), 1),
        pg.Query(""),
    )
    copy = _wire(
        pg.CopyData(b"1\tone\n"),
        pg.CopyData(b"2\ttwo\n"),
        pg.Flush(),
        pg.Sync(),
        pg.CopyDone(),
        pg.Sync(),
        pg.Query("copy t from stdin"),
        pg.CopyFail("client gave up"),
    )
    terminate = _wire(pg.Terminate())
    yield "startup-trust", _seed(s, "startup", startup + query + terminate)
    yield "startup-ssl", _seed(s, "startup", _wire(pg.SSLRequest()) + startup + query)
    yield "startup-gss", _seed(s, "startup", _wire(pg.GSSENCRequest(), pg.SSLRequest()) + startup)
    yield (
        "startup-3.2",
        _seed(
            s, "startup", _wire(pg.StartupMessage({"user": "u", "_pq_.x": "1"}, pg.PROTOCOL_3_2))
        ),
    )
    yield "startup-cancel", _seed(s, "startup", _wire(pg.CancelRequest(4242, b"k3y!")))
    yield "startup-cancel-3.2", _seed(s, "startup", _wire(pg.CancelRequest(4242, b"k" * 32)))
    yield (
        "startup-password",
        _seed(
            s, "startup", startup + _wire(pg.PasswordMessage(_drive.PASSWORD)) + query, "password"
        ),
    )
    yield "startup-md5", _seed(s, "startup", startup + _wire(pg.PasswordMessage(md5)), "md5")
    scram = _wire(pg.SASLInitialResponse("SCRAM-SHA-256", first), pg.SASLResponse(final))
    yield "startup-scram", _seed(s, "startup", startup + scram + query + terminate, "scram")
    yield "query-all", _seed(s, "query", query + terminate)
    yield "query-copy-in", _seed(s, "query", _wire(pg.Query("copy t from stdin")) + copy)
    yield "copy-in", _seed(s, "copy_in", copy)
    yield "failed-extended", _seed(s, "failed_extended", query)
    yield "query-big", _seed(s, "query", _wire(pg.Query("select '" + "z" * 50000 + "'")))


# --- known bug shapes ---------------------------------------------------------------------


def bug_client_seeds() -> Iterator[tuple[str, bytes]]:
    """Malformed backend messages (protocol.md section 5), placed after a valid prefix."""
    c = pg.CLIENT
    desc = _wire(pg.RowDescription([pg.Field("a"), pg.Field("b")]))
    rows = {
        "length-below-4": b"D" + _i32(3),
        "length-negative": b"D" + _i32(-1),
        "length-over-limit": b"D" + _i32(0x7FFFFFFF) + b"\0\1",
        "length-1gib": b"D" + _i32(1 << 30),
        "datarow-column-length-minus-2": _msg(b"D", _i16(1) + _i32(-2)),
        "datarow-column-overrun": _msg(b"D", _i16(1) + _i32(10) + b"abc"),
        "datarow-count-too-high": _msg(b"D", _i16(3) + _i32(1) + b"a" + _i32(-1)),
        "datarow-count-too-low": _msg(b"D", _i16(1) + _i32(1) + b"a" + _i32(-1)),
        "datarow-count-negative": _msg(b"D", _i16(-1)),
        "rowdescription-count-mismatch": _msg(b"T", _i16(2) + b"a\0" + bytes(18)),
        "commandcomplete-no-nul": _msg(b"C", b"SELECT 1"),
        "ready-bad-status": _msg(b"Z", b"X"),
        "ready-no-status": b"Z" + _i32(4),
        "error-no-sqlstate": _msg(b"E", b"SERROR\0Mno code here\0\0"),
        "error-no-terminator": _msg(b"E", b"SERROR\0C22012\0Mx\0"),
        "notice-no-sqlstate": _msg(b"N", b"SNOTICE\0\0"),
        "copy-response-count-mismatch": _msg(b"G", b"\0" + _i16(3) + _i16(0)),
        "parameterdescription-count-mismatch": _msg(b"t", _i16(2) + _u32(23)),
        "unknown-type": _msg(b"!", b""),
        "frontend-type-from-server": _msg(b"Q", b"select 1\0"),
    }
    for name, bad in rows.items():
        yield f"bug-{name}", _seed(c, "simple", desc + bad)
    auth = {
        "auth-unknown-code": _msg(b"R", _i32(99)),
        "auth-md5-short-salt": _msg(b"R", _i32(5) + b"abc"),
        "auth-ok-trailing": _msg(b"R", _i32(0) + b"x"),
        "auth-sasl-no-terminator": _msg(b"R", _i32(10) + b"SCRAM-SHA-256\0"),
        "keydata-short-key": _msg(b"K", _u32(1) + b"abc"),
        "keydata-long-key-3.0": _ready()[:-6].replace(
            bytes(pg.BackendKeyData(4242, b"k3y!")), _msg(b"K", _u32(1) + b"k" * 32)
        ),
        "npv-negative-count": _msg(b"v", _u32(pg.PROTOCOL_3_0) + _i32(-1)),
        "npv-count-too-high": _msg(b"v", _u32(pg.PROTOCOL_3_0) + _i32(0x7FFFFFFF) + b"a\0"),
        "parameterstatus-missing-value": _msg(b"S", b"TimeZone\0"),
        "sasl-long-nonce": _wire(
            pg.AuthenticationSASL(["SCRAM-SHA-256"]),
            pg.AuthenticationSASLContinue(
                f"r={_drive.CLIENT_NONCE}{'A' * 20000},s=MTIzNA==,i=4096".encode()
            ),
        ),
        "sasl-huge-iterations": _wire(
            pg.AuthenticationSASL(["SCRAM-SHA-256"]),
            pg.AuthenticationSASLContinue(
                f"r={_drive.CLIENT_NONCE}xyz,s=MTIzNA==,i=2147483647".encode()
            ),
        ),
        "sasl-bad-final": _wire(
            pg.AuthenticationSASL(["SCRAM-SHA-256"]),
            pg.AuthenticationSASLContinue(f"r={_drive.CLIENT_NONCE}xyz,s=MTIzNA==,i=16".encode()),
            pg.AuthenticationSASLFinal(b"e=invalid-proof"),
        ),
        "ssl-answer-in-auth": b"S",
    }
    for name, bad in auth.items():
        yield f"bug-{name}", _seed(c, "auth", bad)


def bug_server_seeds() -> Iterator[tuple[str, bytes]]:
    """Malformed frontend packets (protocol.md section 5)."""
    s = pg.SERVER
    startup = _wire(pg.StartupMessage({"user": _drive.USER}))
    packets = {
        "startup-length-below-8": _i32(7) + _u32(pg.PROTOCOL_3_0),
        "startup-length-negative": _i32(-8) + _u32(pg.PROTOCOL_3_0),
        "startup-length-huge": _i32(1 << 30) + _u32(pg.PROTOCOL_3_0),
        "startup-tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "startup-no-terminator": _i32(17) + _u32(pg.PROTOCOL_3_0) + b"user\0fuzz\0",
        "startup-missing-value": _i32(14) + _u32(pg.PROTOCOL_3_0) + b"user\0\0",
        "startup-protocol-4": _i32(9) + _u32(0x00040000) + b"\0",
        "startup-protocol-2": _i32(9) + _u32(0x00020000) + b"\0",
        "cancel-key-too-long": _i32(12 + 300) + _u32(_CANCEL) + _u32(1) + b"k" * 300,
        "cancel-key-too-short": _i32(14) + _u32(_CANCEL) + _u32(1) + b"kk",
        "ssl-request-trailing": _i32(9) + _u32(_SSL_OR_GSS[0]) + b"x",
        "ssl-then-pipelined-startup": _wire(pg.SSLRequest()) + startup,
    }
    for name, bad in packets.items():
        yield f"bug-{name}", _seed(s, "startup", bad)
    query = {
        "length-below-4": b"Q" + _i32(3),
        "length-negative": b"Q" + _i32(-2),
        "length-1gib": b"Q" + _i32(1 << 30),
        "sync-with-body": _msg(b"S", b"x"),
        "describe-over-small-limit": b"D" + _i32(20000),
        "query-no-nul": _msg(b"Q", b"select 1"),
        "query-two-nuls": _msg(b"Q", b"select 1\0\0"),
        "bind-count-mismatch": _msg(b"B", b"\0\0" + _i16(0) + _i16(2) + _i32(1) + b"a" + _i16(0)),
        "bind-value-length-minus-2": _msg(b"B", b"\0\0" + _i16(0) + _i16(1) + _i32(-2) + _i16(0)),
        "bind-negative-format-count": _msg(b"B", b"\0\0" + _i16(-1)),
        "parse-types-count-mismatch": _msg(b"P", b"\0select 1\0" + _i16(2) + _u32(23)),
        "describe-bad-kind": _msg(b"D", b"X\0"),
        "execute-no-rows-field": _msg(b"E", b"\0"),
        "functioncall-truncated": _msg(b"F", _u32(1598) + _i16(1)),
        "password-before-auth": _msg(b"p", b"secret\0"),
        "backend-type-from-client": _msg(b"Z", b"I"),
    }
    for name, bad in query.items():
        yield f"bug-{name}", _seed(s, "query", bad)
    first, _, final, _ = _scram_exchange()
    long_nonce = b"n,,n=,r=" + b"N" * 20000
    scram = {
        "sasl-long-client-nonce": pg.SASLInitialResponse("SCRAM-SHA-256", long_nonce),
        "sasl-no-data": pg.SASLInitialResponse("SCRAM-SHA-256", None),
        "sasl-channel-binding": pg.SASLInitialResponse(
            "SCRAM-SHA-256", b"p=tls-unique,," + first[3:]
        ),
        "sasl-unknown-mechanism": pg.SASLInitialResponse("SCRAM-SHA-1", first),
    }
    for name, event in scram.items():
        yield f"bug-{name}", _seed(s, "startup", startup + _wire(event), "scram")
    bad_proof = final[: final.rindex(b",p=") + 3] + b"A" * 43 + b"="
    yield (
        "bug-sasl-wrong-proof",
        _seed(
            s,
            "startup",
            startup
            + _wire(pg.SASLInitialResponse("SCRAM-SHA-256", first))
            + _wire(pg.SASLResponse(bad_proof)),
            "scram",
        ),
    )
    yield (
        "bug-sasl-initial-length-mismatch",
        _seed(
            s, "startup", startup + _msg(b"p", b"SCRAM-SHA-256\0" + _i32(1000) + first), "scram"
        ),
    )


# --- the recorded corpus ------------------------------------------------------------------


def _skip_untyped(stream: bytes) -> tuple[int, int]:
    """Offset after the frontend's startup packets; and the last one's code."""
    pos, code = 0, 0
    while len(stream) - pos >= 8:
        length, code = struct.unpack_from("!iI", stream, pos)
        if length < 8:
            break
        pos += length
        if code not in _SSL_OR_GSS:
            break
    return pos, code


def _skip_typed(stream: bytes, pos: int, stop: bytes) -> int:
    """Offset after the first message of type ``stop`` (or the end)."""
    while len(stream) - pos >= 5:
        code = stream[pos : pos + 1]
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        if length < 4:
            break
        pos += 1 + length
        if code == stop:
            return pos
    return len(stream)


def _first_auth(backend: bytes) -> str:
    pos = backend.find(b"R")
    if pos < 0 or len(backend) < pos + 9:
        return "trust"
    (code,) = struct.unpack_from("!i", backend, pos + 5)
    return {3: "password", 5: "md5", 10: "scram"}.get(code, "trust")


def corpus_seeds(root: pathlib.Path = CORPUS) -> Iterator[tuple[str, str, bytes]]:
    """(harness, name, seed) from every recorded trace, whole and query phase alone."""
    from pgsansio.conformance.trace import read_trace

    if not root.is_dir():
        return
    for path in sorted(root.glob("*/c*.jsonl*")):
        try:
            trace = read_trace(path)
        except ValueError:
            continue
        name = f"{path.parent.name}-{path.name.split('.')[0]}"
        front, back = trace.stream("F"), trace.stream("B")
        if front:
            yield (
                "server_role",
                f"corpus-{name}",
                _seed(pg.SERVER, "startup", front, _first_auth(back)),
            )
            after_startup, code = _skip_untyped(front)
            if code != _CANCEL:
                # Skip the password messages: what follows is the query phase.
                pos = after_startup
                while front[pos : pos + 1] == b"p":
                    pos = _skip_typed(front, pos, b"p")
                query = front[pos:]
                if query:
                    yield "server_role", f"corpus-{name}-query", _seed(pg.SERVER, "query", query)
        if back:
            # Before its startup packet the client may have asked for TLS or
            # GSS encryption: the backend's one-byte answers come first.
            n_answers = 0
            while len(front) - 8 * n_answers >= 8:
                length, code = struct.unpack_from("!iI", front, 8 * n_answers)
                if code not in _SSL_OR_GSS or length != 8:
                    break
                n_answers += 1
            auth = back[n_answers:]
            _, code = _skip_untyped(front)
            protocol = pg.PROTOCOL_3_2 if code == pg.PROTOCOL_3_2 else pg.PROTOCOL_3_0
            if auth:
                seed = _seed(pg.CLIENT, "auth", auth, protocol=protocol)
                yield "client_role", f"corpus-{name}", seed
                query = auth[_skip_typed(auth, 0, b"Z") :]
                if query:
                    seed = _seed(pg.CLIENT, "mixed", query, protocol=protocol)
                    yield "client_role", f"corpus-{name}-query", seed


def all_seeds() -> dict[str, dict[str, bytes]]:
    """Every seed, keyed by harness name then seed name."""
    out: dict[str, dict[str, bytes]] = {
        "client_role": dict([*own_client_seeds(), *bug_client_seeds()]),
        "server_role": dict([*own_server_seeds(), *bug_server_seeds()]),
    }
    for harness, name, seed in corpus_seeds():
        out[harness][name] = seed
    # The same conversations under a 512-byte max_message_size (selector bit 7),
    # so the limit's error path is reached from realistic traffic too.
    for seeds in out.values():
        for name, seed in list(seeds.items()):
            if name.startswith(("query-", "startup-")):
                seeds[f"{name}-small-limit"] = bytes([seed[0] | 0x80]) + seed[1:]
    return out


def write_seeds(outdir: pathlib.Path) -> dict[str, int]:
    """Write every seed under ``outdir/<harness>/``; return how many per harness.

    File names carry a content hash so a rerun replaces nothing and libFuzzer
    never sees two copies of one input.
    """
    counts = {}
    for harness, seeds in all_seeds().items():
        target = outdir / harness
        target.mkdir(parents=True, exist_ok=True)
        for old in target.iterdir():
            old.unlink()
        for name, data in seeds.items():
            digest = hashlib.sha1(data).hexdigest()[:12]
            (target / f"{name}-{digest}").write_bytes(data)
        counts[harness] = len(seeds)
    return counts


if __name__ == "__main__":
    print(write_seeds(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/.seeds")))
