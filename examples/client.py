"""A minimal blocking PostgreSQL client on pgsansio's client-role Connection.

    python examples/client.py --host H --port P --user U --password PW --dbname D "select 1"

It shows the whole sans-IO loop with nothing but ``socket`` and ``ssl``: TLS as
``sslmode=prefer`` does it, trust / cleartext / MD5 / SCRAM-SHA-256 login, one
simple-protocol query. Rows go to stdout tab-separated (NULL as ``\\N``), then
the command tag; a server error goes to stderr as ``SEVERITY SQLSTATE: message`` and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys

import pgsansio as pg


def next_event(sock: socket.socket, conn: pg.Connection) -> pg.Event:
    """Return the next event, reading from the socket as often as needed."""
    while True:
        event = conn.next_event()
        if event is not pg.NEED_DATA:
            assert isinstance(event, pg.Event)
            return event
        conn.receive_data(sock.recv(65536))


def run(args: argparse.Namespace) -> int:
    """Log in, run ``args.sql``, print the results; return the exit status."""
    sock: socket.socket = socket.create_connection((args.host, args.port), timeout=30)
    conn = pg.Connection(pg.CLIENT)
    sock.sendall(conn.send(pg.SSLRequest()))
    if next_event(sock, conn) == pg.SSLResponse(True):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # prefer: no checks
        sock = context.wrap_socket(sock, server_hostname=args.host)
    params = {"user": args.user, "database": args.dbname or args.user}
    sock.sendall(conn.send(pg.StartupMessage(params)))
    scram = pg.ScramClient(args.password or "")
    failed = False
    while True:
        event = next_event(sock, conn)
        reply: pg.Event | None = None
        if isinstance(event, pg.AuthenticationCleartextPassword):
            reply = pg.PasswordMessage(args.password or "")
        elif isinstance(event, pg.AuthenticationMD5Password):
            reply = pg.PasswordMessage(pg.md5_response(args.user, args.password or "", event.salt))
        elif isinstance(event, pg.AuthenticationSASL):
            reply = pg.SASLInitialResponse("SCRAM-SHA-256", scram.client_first())
        elif isinstance(event, pg.AuthenticationSASLContinue):
            reply = pg.SASLResponse(scram.client_final(event.data))
        elif isinstance(event, pg.AuthenticationSASLFinal):
            scram.verify_server_final(event.data)  # unmasks a server that faked the login
        elif isinstance(event, (pg.ErrorResponse, pg.NoticeResponse)):
            print(f"{event.severity} {event.sqlstate}: {event.message}", file=sys.stderr)
            failed = failed or isinstance(event, pg.ErrorResponse)
        elif isinstance(event, pg.DataRow):
            print("\t".join("\\N" if v is None else v.decode() for v in event.values))
        elif isinstance(event, pg.CommandComplete):
            print(event.tag)
        elif isinstance(event, pg.ReadyForQuery):
            if args.sql is None or failed:
                break
            reply, args.sql = pg.Query(args.sql), None
        elif isinstance(event, pg.ConnectionClosed):
            return 1
        if reply is not None:
            sock.sendall(conn.send(reply))
        if conn.state is pg.State.CLOSED:
            return 1
    sock.sendall(conn.send(pg.Terminate()))
    sock.close()
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--password")
    parser.add_argument("--dbname")
    parser.add_argument("sql")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
