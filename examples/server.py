"""A tiny PostgreSQL server on pgsansio's server-role Connection (a thread per client).

    python examples/server.py --port 5433 [--password PW]
    psql -h 127.0.0.1 -p 5433 -U anyone -c "select 1"

Any user and database are accepted; with ``--password`` the client must prove
it with SCRAM-SHA-256. Every simple Query is answered once, whole (several
statements included): ``SELECT``-like text gets one row holding the query
text, anything else just its command tag, an empty query EmptyQueryResponse.
The extended protocol is refused with a clean error, as a real server would
refuse a feature it lacks. Prints ``listening on HOST:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import socket
import threading

import pgsansio as pg

ROWS = ("SELECT", "VALUES", "SHOW", "WITH", "TABLE")
EXTENDED = (pg.Parse, pg.Bind, pg.Describe, pg.Execute, pg.Close)
UNSUPPORTED = "extended query protocol not supported by this example"
# The parameters libpq reads at startup (it needs server_version, for one).
PARAMS = {
    "server_version": "18.0",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
}


def welcome() -> list[pg.Event]:
    """What a server sends once the client is in, up to the first ReadyForQuery."""
    status = [pg.ParameterStatus(name, value) for name, value in PARAMS.items()]
    key = pg.BackendKeyData(threading.get_native_id(), secrets.token_bytes(4))
    return [pg.AuthenticationOk(), *status, key, pg.ReadyForQuery("I")]


def serve(sock: socket.socket, password: str | None) -> None:
    """Run one session; a client that breaks the protocol gets a FATAL error."""
    conn = pg.Connection(pg.SERVER)
    with sock, contextlib.suppress(OSError):  # OSError: the client went away
        try:
            session(sock, conn, pg.ScramServer(password) if password else None)
        except pg.ProtocolError as exc:  # garbage, or a malformed SCRAM message
            fatal = pg.ErrorResponse.build(exc.sqlstate, str(exc), severity="FATAL")
            sock.sendall(bytes(fatal))  # not conn.send: conn may be in ERROR


def session(sock: socket.socket, conn: pg.Connection, scram: pg.ScramServer | None) -> None:
    """Answer each event; all the answers to one event go out in one write."""
    user, failed = "", False  # failed: an extended batch was refused; wait for its Sync
    while conn.state is not pg.State.CLOSED:
        event = conn.next_event()
        if event is pg.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        out: list[pg.Event] = []
        if isinstance(event, pg.SSLRequest):
            out = [pg.SSLResponse(False)]  # no TLS here: psql carries on in plaintext
        elif isinstance(event, pg.GSSENCRequest):
            out = [pg.GSSENCResponse(False)]
        elif isinstance(event, pg.StartupMessage):
            user = event.get("user") or ""
            out = [pg.AuthenticationSASL(["SCRAM-SHA-256"])] if scram else welcome()
        elif isinstance(event, pg.SASLInitialResponse) and scram:
            out = [pg.AuthenticationSASLContinue(scram.server_first(event.data or b""))]
        elif isinstance(event, pg.SASLResponse) and scram:
            try:
                out = [pg.AuthenticationSASLFinal(scram.server_final(event.data)), *welcome()]
            except pg.AuthenticationFailed:
                msg = f'password authentication failed for user "{user}"'
                out = [pg.ErrorResponse.build("28P01", msg, severity="FATAL")]
        elif isinstance(event, pg.Query):
            out = answer(event.sql)
        elif isinstance(event, pg.FunctionCall):  # answered like a Query: no Sync follows
            out = [pg.ErrorResponse.build("0A000", UNSUPPORTED), pg.ReadyForQuery("I")]
        elif isinstance(event, EXTENDED) and not failed:
            out, failed = [pg.ErrorResponse.build("0A000", UNSUPPORTED)], True
        elif isinstance(event, pg.Sync):
            out, failed = [pg.ReadyForQuery("I")], False
        # Terminate, EOF and CancelRequest close the connection: the loop ends.
        sock.sendall(b"".join(conn.send(e) for e in out))


def answer(sql: str) -> list[pg.Event]:
    """One result for the whole string (a real server answers each statement)."""
    words = sql.replace(";", " ").split()
    if not words:
        return [pg.EmptyQueryResponse(), pg.ReadyForQuery("I")]
    if words[0].upper() not in ROWS:
        return [pg.CommandComplete(words[0].upper()), pg.ReadyForQuery("I")]
    row = [pg.RowDescription([pg.Field("query")]), pg.DataRow([sql.encode()])]
    return [*row, pg.CommandComplete("SELECT 1"), pg.ReadyForQuery("I")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5433, help="0 picks a free port")
    parser.add_argument("--password", help="require this password (SCRAM-SHA-256)")
    args = parser.parse_args()
    with socket.create_server((args.host, args.port)) as listener:
        print("listening on {}:{}".format(*listener.getsockname()[:2]), flush=True)
        while True:
            client, _ = listener.accept()
            threading.Thread(target=serve, args=(client, args.password), daemon=True).start()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it quietly
        main()
