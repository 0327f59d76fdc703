"""Corpus scenarios recorded with real client drivers.

psycopg 3 (libpq 18), asyncpg and pg8000 run in this process; PgJDBC runs as the
single-file Java program ``java/PgjdbcScenario.java`` and node-postgres as
``node/scenario.js``. Each scenario does a fixed amount of work through the recording
relay (``env.host``/``env.port``), creates and drops its own tables directly on the
server, and finishes in seconds.

What each scenario claims to contain is checked against the recorded traces by the
function registered for it in :data:`CHECKS`, which ``scripts/make_corpus.py`` runs once
the relay has written the traces (after the scenario function returned). The checks
decode the traces crudely, 5-byte header by 5-byte header, independently of
``pgsansio.protocol``. Client-visible results are checked inside the scenarios.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import pathlib
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pgsansio.conformance.trace import Trace

from . import Env, scenario

HERE = pathlib.Path(__file__).resolve().parent
JAVA_PROGRAM = HERE / "java" / "PgjdbcScenario.java"
NODE_DIR = HERE / "node"
PGJDBC_VERSION = "42.7.13"

Check = Callable[[Sequence[Trace]], None]
CHECKS: dict[str, Check] = {}
"""Scenario id -> function asserting what the recorded traces of that scenario contain."""


def checks(scenario_id: str) -> Callable[[Check], Check]:
    """Register ``fn`` as the trace check of ``scenario_id``."""

    def register(fn: Check) -> Check:
        CHECKS[scenario_id] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------
# Crude decoding of recorded traces, for the checks.

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


@dataclasses.dataclass(frozen=True)
class Msg:
    """One message of a trace. ``kind`` is the type byte as a str, or the name of a
    startup-phase packet ("Startup", "SSLRequest", "GSSENCRequest", "CancelRequest")
    or "ssl-answer" for the server's one-byte reply to an SSLRequest/GSSENCRequest.
    ``seq`` is the index (in the trace's interleaved chunk list) of the chunk that
    completed the message, so messages of both directions can be ordered in time."""

    direction: str
    kind: str
    body: bytes
    seq: int

    @property
    def length(self) -> int:
        """The message's on-the-wire length field (body plus 4)."""
        return len(self.body) + 4


def decode(trace: Trace) -> list[Msg]:
    """Split a trace into messages of both directions, in the order they completed."""
    buf = {"F": bytearray(), "B": bytearray()}
    out: list[Msg] = []
    started = False  # frontend sent its StartupMessage (or a CancelRequest)
    answers_due = 0  # one-byte answers the backend owes to SSL/GSSENC requests
    for seq, chunk in enumerate(trace.chunks):
        if chunk.eof:
            continue
        b = buf[chunk.direction]
        b += chunk.data
        if chunk.direction == "F":
            while True:
                if not started:
                    if len(b) < 8:
                        break
                    n, code = struct.unpack_from("!ii", b)
                    if len(b) < n:
                        break
                    kind = {
                        SSL_REQUEST: "SSLRequest",
                        GSSENC_REQUEST: "GSSENCRequest",
                        CANCEL_REQUEST: "CancelRequest",
                    }.get(code, "Startup")
                    out.append(Msg("F", kind, bytes(b[4:n]), seq))
                    del b[:n]
                    if kind in ("SSLRequest", "GSSENCRequest"):
                        answers_due += 1
                    else:
                        started = True
                    continue
                if len(b) < 5:
                    break
                (n,) = struct.unpack_from("!i", b, 1)
                if len(b) < 1 + n:
                    break
                out.append(Msg("F", chr(b[0]), bytes(b[5 : 1 + n]), seq))
                del b[: 1 + n]
        else:
            while b:
                if answers_due:
                    out.append(Msg("B", "ssl-answer", bytes(b[:1]), seq))
                    del b[:1]
                    answers_due -= 1
                    continue
                if len(b) < 5:
                    break
                (n,) = struct.unpack_from("!i", b, 1)
                if len(b) < 1 + n:
                    break
                out.append(Msg("B", chr(b[0]), bytes(b[5 : 1 + n]), seq))
                del b[: 1 + n]
    for d, rest in buf.items():
        assert not rest, f"connection {trace.connection}: {len(rest)} undecoded {d} bytes"
    return out


class Conv:
    """The decoded messages of one connection, with small query helpers."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.msgs = decode(trace)
        self.f = [m for m in self.msgs if m.direction == "F"]
        self.b = [m for m in self.msgs if m.direction == "B"]

    def __repr__(self) -> str:
        return f"<connection {self.trace.connection}: F {self.ftypes()} B {self.btypes()}>"

    def ftypes(self) -> str:
        return "".join(m.kind if len(m.kind) == 1 else f"[{m.kind}]" for m in self.f)

    def btypes(self) -> str:
        return "".join(m.kind if len(m.kind) == 1 else f"[{m.kind}]" for m in self.b)

    def fe(self, kind: str) -> list[Msg]:
        return [m for m in self.f if m.kind == kind]

    def be(self, kind: str) -> list[Msg]:
        return [m for m in self.b if m.kind == kind]

    def startup_params(self) -> dict[str, str]:
        (startup,) = self.fe("Startup")
        fields = startup.body[4:].split(b"\0")
        pairs = [f.decode() for f in fields[: len(fields) - 2]]
        return dict(zip(pairs[0::2], pairs[1::2], strict=True))

    def startup_version(self) -> tuple[int, int]:
        (startup,) = self.fe("Startup")
        (code,) = struct.unpack_from("!i", startup.body)
        return code >> 16, code & 0xFFFF

    def parameter_status(self) -> list[tuple[str, str]]:
        out = []
        for m in self.be("S"):
            name, value, _ = m.body.split(b"\0")
            out.append((name.decode(), value.decode()))
        return out

    def auth_codes(self) -> list[int]:
        return [struct.unpack_from("!i", m.body)[0] for m in self.be("R")]

    def statuses(self) -> str:
        return "".join(m.body.decode() for m in self.be("Z"))

    def error_codes(self) -> list[str]:
        codes = []
        for m in self.be("E"):
            for field in m.body.split(b"\0"):
                if field[:1] == b"C":
                    codes.append(field[1:].decode())
        return codes

    def tags(self) -> list[str]:
        return [m.body.rstrip(b"\0").decode() for m in self.be("C")]

    def queries(self) -> list[str]:
        """SQL text of every simple Query and every Parse, in order."""
        out = []
        for m in self.f:
            if m.kind == "Q":
                out.append(m.body.rstrip(b"\0").decode())
            elif m.kind == "P":
                out.append(m.body.split(b"\0")[1].decode())
        return out

    def parse_names(self) -> list[str]:
        return [m.body.split(b"\0")[0].decode() for m in self.fe("P")]

    def bind_result_formats(self) -> list[list[int]]:
        """The result-column format codes of every Bind."""
        out = []
        for m in self.fe("B"):
            body = m.body
            i = body.index(b"\0") + 1  # portal
            i = body.index(b"\0", i) + 1  # statement
            (nf,) = struct.unpack_from("!h", body, i)
            i += 2 + 2 * nf
            (np,) = struct.unpack_from("!h", body, i)
            i += 2
            for _ in range(np):
                (ln,) = struct.unpack_from("!i", body, i)
                i += 4 + max(ln, 0)
            (nr,) = struct.unpack_from("!h", body, i)
            out.append(list(struct.unpack_from(f"!{nr}h", body, i + 2)))
        return out

    def execute_max_rows(self) -> list[int]:
        return [struct.unpack_from("!i", m.body, m.body.index(b"\0") + 1)[0] for m in self.fe("E")]


def convs(traces: Sequence[Trace], n: int) -> list[Conv]:
    assert len(traces) == n, f"expected {n} connection(s), recorded {len(traces)}"
    return [Conv(t) for t in traces]


def common_startup(c: Conv, *, ssl_request: bool) -> None:
    """Assert a normal successful session start (SSLRequest refused or none) and a
    Terminate at the end."""
    assert bool(c.fe("SSLRequest")) == ssl_request, c
    if ssl_request:
        assert [m.body for m in c.be("ssl-answer")] == [b"N"], c
    assert c.auth_codes()[-1] == 0, c.auth_codes()
    assert len(c.be("K")) == 1, c
    assert c.be("Z"), c
    assert c.f[-1].kind == "X", f"no Terminate at the end: {c}"


def count(seq: Sequence[Any], item: Any) -> int:
    return sum(1 for x in seq if x == item)


# ---------------------------------------------------------------------------------------
# Helpers for the scenarios themselves.


def sql(env: Env, *statements: str) -> None:
    """Run setup/teardown SQL directly on the server (not recorded)."""
    for s in statements:
        env.server.execute(s, dbname=env.dbname)


def own_table(env: Env, name: str, columns: str) -> None:
    sql(
        env,
        f"DROP TABLE IF EXISTS {name}",
        f"CREATE TABLE {name} ({columns})",
        f"GRANT ALL ON {name} TO PUBLIC",
    )


def drop(env: Env, *names: str) -> None:
    for name in names:
        sql(env, f"DROP TABLE IF EXISTS {name}")


def conninfo(env: Env, user: str = "trust_user", **extra: str) -> str:
    """libpq conninfo for the relay (with the user's password) plus ``extra``."""
    extra.setdefault("connect_timeout", "10")
    return env.dsn(user, **extra)


def expect(value: Any, wanted: Any, what: str) -> None:
    if value != wanted:
        raise AssertionError(f"{what}: expected {wanted!r}, got {value!r}")


# ---------------------------------------------------------------------------------------
# psycopg 3 (libpq 18)


COMMAND_OK = 1  # psycopg.pq.ExecStatus.COMMAND_OK


def pq_call(conn: Any, send: Callable[[], None]) -> list[Any]:
    """Send one libpq-level request on a psycopg connection and wait for its results the
    way psycopg itself does. Blocking libpq calls (``pgconn.prepare()``,
    ``describe_prepared()``...) must not be used here: they hung, because the recording
    relay runs on a thread of this process and did not get to forward the bytes."""
    from psycopg import generators

    with conn.lock:
        send()
        results: list[Any] = conn.wait(generators.execute(conn.pgconn))
    return results


def psycopg_connect(env: Env, user: str = "trust_user", **extra: Any) -> Any:
    import psycopg

    autocommit = bool(extra.pop("autocommit", False))
    return psycopg.connect(conninfo(env, user, **extra), autocommit=autocommit)


@scenario(
    "psycopg-startup-options",
    client="psycopg",
    description="libpq startup packet with options=-c search_path=... and application_name; "
    "SSLRequest refused with N (sslmode=prefer)",
)
def psycopg_startup_options(env: Env) -> None:
    with psycopg_connect(
        env,
        sslmode="prefer",
        options="-c search_path=corpus_sp,public -c statement_timeout=5000",
        application_name="pgsansio-corpus-psycopg",
    ) as conn:
        row = conn.execute(
            "SELECT current_setting('search_path'), current_setting('application_name'),"
            " current_setting('statement_timeout')"
        ).fetchone()
        expect(row, ("corpus_sp,public", "pgsansio-corpus-psycopg", "5s"), "settings")


@checks("psycopg-startup-options")
def _check_startup_options(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    params = c.startup_params()
    assert params["options"] == "-c search_path=corpus_sp,public -c statement_timeout=5000", params
    assert params["application_name"] == "pgsansio-corpus-psycopg", params
    assert ("application_name", "pgsansio-corpus-psycopg") in c.parameter_status()


@scenario(
    "psycopg-describe-binary",
    client="psycopg",
    description="Describe statement (t + T) and Describe portal of a DECLAREd cursor, NoData "
    "for INSERT/UPDATE, binary parameters and binary result columns",
)
def psycopg_describe_binary(env: Env) -> None:
    own_table(env, "corpus_pg_describe", "id int PRIMARY KEY, name text, payload bytea")
    try:
        with psycopg_connect(env, sslmode="disable") as conn:
            # Binary parameters (%b) and a binary result (binary=True).
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    "INSERT INTO corpus_pg_describe VALUES (%b, %b, %b), (%b, %b, %b)",
                    (1, "one", b"\x00\x01\xff", 2, "two", b"\xde\xad"),
                )
                cur.execute("UPDATE corpus_pg_describe SET name = upper(name) WHERE id = %b", (2,))
                cur.execute("SELECT id, name, payload FROM corpus_pg_describe ORDER BY id")
                expect(
                    cur.fetchall(),
                    [(1, "one", b"\x00\x01\xff"), (2, "TWO", b"\xde\xad")],
                    "binary rows",
                )
            # A named statement, then Describe statement at the protocol level:
            # ParameterDescription 't' + RowDescription 'T'.
            conn.execute("SELECT id FROM corpus_pg_describe WHERE id = %s", (1,), prepare=True)
            pgconn = conn.pgconn
            sql_text = b"SELECT name, id * 2 FROM corpus_pg_describe WHERE id = $1 AND name <> $2"
            (res,) = pq_call(conn, lambda: pgconn.send_prepare(b"corpus_desc", sql_text))
            expect(res.status, COMMAND_OK, "prepare status")
            (res,) = pq_call(conn, lambda: pgconn.send_describe_prepared(b"corpus_desc"))
            expect((res.nparams, res.nfields), (2, 2), "described statement")
            # A statement without rows describes as NoData.
            nodata = b"DELETE FROM corpus_pg_describe WHERE id < 0"
            pq_call(conn, lambda: pgconn.send_prepare(b"corpus_desc_nodata", nodata))
            (res,) = pq_call(conn, lambda: pgconn.send_describe_prepared(b"corpus_desc_nodata"))
            expect(res.nfields, 0, "NoData statement")
            # Describe portal: psycopg's server-side cursor DECLAREs a cursor, then
            # describes that portal ('D' 'P' "corpus_cur") before fetching.
            with conn.cursor(name="corpus_cur", binary=True) as scur:
                scur.execute("SELECT id, payload FROM corpus_pg_describe ORDER BY id")
                expect(scur.fetchall(), [(1, b"\x00\x01\xff"), (2, b"\xde\xad")], "cursor")
            conn.commit()
    finally:
        drop(env, "corpus_pg_describe")


@checks("psycopg-describe-binary")
def _check_describe_binary(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    describes = [m.body for m in c.fe("D")]
    assert b"Scorpus_desc\0" in describes, describes
    assert b"Pcorpus_cur\0" in describes, describes
    assert b"P\0" in describes, describes  # unnamed portals of ordinary executes
    assert c.be("t"), "no ParameterDescription"
    assert len(c.be("n")) >= 3, "expected NoData for INSERT, UPDATE and DELETE"
    assert [1] in c.bind_result_formats(), c.bind_result_formats()  # all columns binary
    assert [0] in c.bind_result_formats(), c.bind_result_formats()
    assert any("_pg3_" in name for name in c.parse_names()), c.parse_names()


@scenario(
    "psycopg-pipeline-error",
    client="psycopg",
    description="pipeline mode inside a transaction: BEGIN and three P B D E with one Sync; "
    "the middle one fails, the rest is discarded until Sync, Z(E), then ROLLBACK",
)
def psycopg_pipeline_error(env: Env) -> None:
    import psycopg

    with psycopg_connect(env, sslmode="disable") as conn:
        failed = False
        try:
            with conn.pipeline():
                first = conn.execute("SELECT 1")
                conn.execute("SELECT 1 / 0")
                conn.execute("SELECT 2")
        except psycopg.errors.DivisionByZero:
            failed = True
        expect(failed, True, "pipeline raised DivisionByZero")
        expect(first.fetchone(), (1,), "first result")
        expect(conn.info.transaction_status.name, "INERROR", "transaction status")
        conn.rollback()
        expect(conn.execute("SELECT 3").fetchone(), (3,), "after rollback")


@checks("psycopg-pipeline-error")
def _check_pipeline_error(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    assert c.error_codes() == ["22012"], c.error_codes()
    assert "E" in c.statuses(), c.statuses()
    # The three queries went out with a single Sync, answered by Z(E).
    assert "PBDEPBDEPBDESH" in c.ftypes(), c.ftypes()
    z_e = next(m for m in c.be("Z") if m.body == b"E")
    replies = "".join(m.kind for m in c.b if m.seq <= z_e.seq)
    # select 1: 1 2 T D C; select 1/0: 1 E; select 2: nothing (discarded until Sync).
    assert replies.endswith("12TDC1EZ"), replies
    assert c.queries()[-4:] == ["ROLLBACK", "BEGIN", "SELECT 3", "COMMIT"], c.queries()


@scenario(
    "psycopg-pipeline-autocommit",
    client="psycopg",
    description="libpq pipeline mode (psycopg's pq wrapper) in autocommit: six queries, each "
    "followed by its own Sync, all sent before the first ReadyForQuery; the error of the third "
    "aborts only its own Sync segment",
)
def psycopg_pipeline_autocommit(env: Env) -> None:
    from psycopg import generators, pq

    queries = [
        b"SELECT $1::int AS n, pg_sleep(0.05)",
        b"SELECT $1::int AS n, pg_sleep(0.05)",
        b"SELECT 1 / ($1::int - 3) AS boom",
        b"SELECT $1::int AS n, pg_sleep(0.05)",
        b"SELECT $1::int AS n, pg_sleep(0.05)",
        b"SELECT $1::int AS n",
    ]
    with psycopg_connect(env, sslmode="disable", autocommit=True) as conn, conn.lock:
        # Driven through libpq's own pipeline API, never blocking in libpq (psycopg keeps
        # the connection non-blocking): send everything, then collect the results.
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        for i, query in enumerate(queries, start=1):
            # The sleeps keep the server busy, so all Syncs are in flight at once.
            pgconn.send_query_params(query, [str(i).encode()])
            pgconn.pipeline_sync()
        conn.wait(generators.send(pgconn))
        statuses = []
        syncs = 0
        while syncs < len(queries):
            for res in conn.wait(generators.fetch_many(pgconn)):
                if res.status == pq.ExecStatus.PIPELINE_SYNC:
                    syncs += 1
                else:
                    statuses.append(pq.ExecStatus(res.status).name)
        pgconn.exit_pipeline_mode()
        expect(
            statuses,
            ["TUPLES_OK", "TUPLES_OK", "FATAL_ERROR", "TUPLES_OK", "TUPLES_OK", "TUPLES_OK"],
            "pipeline results",
        )


@checks("psycopg-pipeline-autocommit")
def _check_pipeline_autocommit(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    syncs = c.fe("S")
    assert len(syncs) == 6, c
    assert c.statuses() == "I" * 7, c.statuses()  # one after authentication, one per Sync
    assert c.error_codes() == ["22012"], c.error_codes()
    # All six Syncs were sent before the first of their ReadyForQuery came back.
    first_reply = c.be("Z")[1]
    assert all(m.seq < first_reply.seq for m in syncs), c
    assert c.ftypes().count("PBDES") == 6, c.ftypes()


@scenario(
    "psycopg-close-deallocate",
    client="psycopg",
    description="prepared statements (prepare=True) evicted with protocol Close S, Close "
    "portal, DEALLOCATE ALL and DISCARD ALL",
)
def psycopg_close_deallocate(env: Env) -> None:
    with psycopg_connect(env, sslmode="disable", autocommit=True) as conn:
        conn.prepared_max = 2
        for i in range(4):
            # Four distinct prepared statements with a cache of two: the oldest are
            # evicted with a protocol-level Close (libpq >= 17).
            got = conn.execute(f"SELECT %s::int + {i}", (i,), prepare=True).fetchone()
            expect(got, (2 * i,), "prepared result")
        # Close portal at the protocol level on a SQL-declared cursor.
        conn.execute("BEGIN")
        conn.execute("DECLARE corpus_portal CURSOR FOR SELECT generate_series(1, 3)")
        pgconn = conn.pgconn
        (res,) = pq_call(conn, lambda: pgconn.send_close_portal(b"corpus_portal"))
        expect(res.status, COMMAND_OK, "close portal status")
        conn.execute("COMMIT")
        conn.execute("SELECT 42", prepare=True)
        conn.execute("DEALLOCATE ALL")
        conn.execute("SELECT 43", prepare=True)
        conn.execute("DISCARD ALL")
        expect(conn.execute("SELECT 44", prepare=True).fetchone(), (44,), "after discard")


@checks("psycopg-close-deallocate")
def _check_close_deallocate(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    closes = [m.body for m in c.fe("C")]
    assert any(b[:1] == b"S" and b[1:].startswith(b"_pg3_") for b in closes), closes
    assert b"Pcorpus_portal\0" in closes, closes
    assert len(c.be("3")) == len(closes), c
    tags = c.tags()
    assert "DEALLOCATE ALL" in tags, tags
    assert "DISCARD ALL" in tags, tags
    assert len({n for n in c.parse_names() if n}) >= 4, c.parse_names()


@scenario(
    "psycopg-copy-in",
    client="psycopg",
    description="COPY FROM STDIN in text and in binary format (CopyInResponse G, CopyData d, "
    "CopyDone c)",
)
def psycopg_copy_in(env: Env) -> None:
    own_table(env, "corpus_pg_copy_in", "id int, name text, score float8, at date")
    try:
        with psycopg_connect(env, sslmode="disable") as conn:
            with conn.cursor() as cur:
                with cur.copy("COPY corpus_pg_copy_in (id, name, score, at) FROM STDIN") as cp:
                    for i in range(50):
                        cp.write_row((i, f"name\t{i}", i / 4, f"2024-01-{i % 28 + 1:02d}"))
                with cur.copy(
                    "COPY corpus_pg_copy_in (id, name, score, at) FROM STDIN (FORMAT BINARY)"
                ) as cp:
                    cp.set_types(["int4", "text", "float8", "date"])
                    for i in range(50, 80):
                        cp.write_row((i, None if i % 7 == 0 else f"bin {i}", -i / 8, None))
                cur.execute("SELECT count(*), count(name), count(at) FROM corpus_pg_copy_in")
                expect(cur.fetchone(), (80, 76, 50), "copied rows")
            conn.commit()
    finally:
        drop(env, "corpus_pg_copy_in")


@checks("psycopg-copy-in")
def _check_copy_in(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    ins = c.be("G")
    assert len(ins) == 2, c
    assert [m.body[0] for m in ins] == [0, 1], "expected a text then a binary CopyInResponse"
    data = b"".join(m.body for m in c.fe("d"))
    assert data.count(b"PGCOPY\n\xff\r\n\0") == 1, "binary COPY signature missing"
    assert len(c.fe("c")) == 2, c
    assert "COPY 50" in c.tags() and "COPY 30" in c.tags(), c.tags()


@scenario(
    "psycopg-copy-fail",
    client="psycopg",
    description="COPY FROM STDIN aborted by the client: CopyFail f -> ErrorResponse 57014, "
    "transaction in error until ROLLBACK",
)
def psycopg_copy_fail(env: Env) -> None:
    own_table(env, "corpus_pg_copy_fail", "id int, name text")
    try:
        with psycopg_connect(env, sslmode="disable") as conn:
            raised = False
            try:
                with conn.cursor() as cur, cur.copy("COPY corpus_pg_copy_fail FROM STDIN") as cp:
                    for i in range(10):
                        cp.write_row((i, f"row {i}"))
                    raise ValueError("client gave up in the middle of the copy")
            except ValueError:
                raised = True
            expect(raised, True, "exception from the copy block")
            expect(conn.info.transaction_status.name, "INERROR", "transaction status")
            conn.rollback()
            expect(
                conn.execute("SELECT count(*) FROM corpus_pg_copy_fail").fetchone(),
                (0,),
                "rows after CopyFail",
            )
    finally:
        drop(env, "corpus_pg_copy_fail")


@checks("psycopg-copy-fail")
def _check_copy_fail(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    (fail,) = c.fe("f")
    assert b"gave up" in fail.body, fail
    assert not c.fe("c"), "CopyDone sent although the copy failed"
    assert c.error_codes() == ["57014"], c.error_codes()
    assert "E" in c.statuses(), c.statuses()


def _copy_in_extended(conn: Any, rows: Sequence[bytes]) -> str | None:
    """COPY FROM STDIN started with libpq's extended protocol (P B D E S), fed ``rows``
    and ended with CopyDone (libpq then sends a second Sync). Returns the SQLSTATE of
    the error the COPY ended with, or None."""
    import psycopg
    from psycopg import generators, pq

    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query_params(b"COPY corpus_pg_copy_ext (id, name) FROM STDIN", None)
        (res,) = conn.wait(generators.execute(pgconn))
        expect(res.status, pq.ExecStatus.COPY_IN, "COPY started")
        for row in rows:
            conn.wait(generators.copy_to(pgconn, row))
        try:
            conn.wait(generators.copy_end(pgconn, None))
        except psycopg.Error as e:
            return e.sqlstate
    return None


@scenario(
    "psycopg-copy-extended",
    client="psycopg",
    description="COPY FROM STDIN started through the extended protocol (libpq P B D E S, "
    "the Sync arriving during copy-in is ignored, libpq sends another Sync after CopyDone); "
    "once successful, once failing on a duplicate key (E, discard until Sync, one Z)",
)
def psycopg_copy_extended(env: Env) -> None:
    own_table(env, "corpus_pg_copy_ext", "id int PRIMARY KEY, name text")
    try:
        with psycopg_connect(env, sslmode="disable", autocommit=True) as conn:
            rows = [b"%d\tname %d\n" % (i, i) for i in range(1, 21)]
            expect(_copy_in_extended(conn, rows), None, "first COPY")
            dup = [b"21\tnew\n", b"5\tduplicate\n", b"22\tafter the error\n"]
            expect(_copy_in_extended(conn, dup), "23505", "second COPY")
            got = conn.execute("SELECT count(*), max(id) FROM corpus_pg_copy_ext").fetchone()
            expect(got, (20, 20), "rows after the failed COPY")
    finally:
        drop(env, "corpus_pg_copy_ext")


@checks("psycopg-copy-extended")
def _check_copy_extended(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    assert c.ftypes().count("PBDES") == 2, c.ftypes()
    assert c.ftypes().count("dcS") == 2, c.ftypes()
    assert len(c.be("G")) == 2, c
    assert c.error_codes() == ["23505"], c.error_codes()
    # Four Syncs for the two COPYs, but only one ReadyForQuery each: the Sync that
    # arrived during copy-in mode was ignored.
    copy_msgs = [m for m in c.msgs if m.seq < c.fe("Q")[0].seq] if c.fe("Q") else c.msgs
    syncs = sum(1 for m in copy_msgs if m.direction == "F" and m.kind == "S")
    readies = sum(1 for m in copy_msgs if m.direction == "B" and m.kind == "Z") - 1
    assert (syncs, readies) == (4, 2), (syncs, readies)
    assert "COPY 20" in c.tags(), c.tags()


@scenario(
    "psycopg-copy-out",
    client="psycopg",
    description="COPY TO STDOUT in text and binary format (CopyOutResponse H, server CopyData "
    "d, CopyDone c), also COPY (query) TO STDOUT",
)
def psycopg_copy_out(env: Env) -> None:
    own_table(env, "corpus_pg_copy_out", "id int, name text, flag bool")
    sql(
        env,
        "INSERT INTO corpus_pg_copy_out SELECT g, 'name ' || g, g % 2 = 0 "
        "FROM generate_series(1, 40) g",
    )
    try:
        with psycopg_connect(env, sslmode="disable") as conn, conn.cursor() as cur:
            with cur.copy("COPY corpus_pg_copy_out TO STDOUT") as cp:
                text_rows = list(cp.rows())
            expect(len(text_rows), 40, "text rows")
            with cur.copy("COPY corpus_pg_copy_out TO STDOUT (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "text", "bool"])
                bin_rows = list(cp.rows())
            expect(bin_rows[-1], (40, "name 40", True), "last binary row")
            with cur.copy(
                "COPY (SELECT id, name FROM corpus_pg_copy_out WHERE flag) TO STDOUT (FORMAT CSV)"
            ) as cp:
                raw = b"".join(bytes(block) for block in cp)
            expect(raw.count(b"\n"), 20, "csv lines")
    finally:
        drop(env, "corpus_pg_copy_out")


@checks("psycopg-copy-out")
def _check_copy_out(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    outs = c.be("H")
    assert [m.body[0] for m in outs] == [0, 1, 0], c
    assert len(c.be("d")) >= 40 + 40 + 20, len(c.be("d"))
    assert len(c.be("c")) == 3, c
    assert c.tags().count("COPY 40") == 2 and "COPY 20" in c.tags(), c.tags()


@scenario(
    "psycopg-listen-notify",
    client="psycopg",
    connections=2,
    description="LISTEN and NOTIFY to self (A right after C NOTIFY), then a NOTIFY from a second "
    "connection arriving unsolicited while the first is idle",
)
def psycopg_listen_notify(env: Env) -> None:
    with psycopg_connect(env, sslmode="disable", autocommit=True) as listener:
        listener.execute("LISTEN corpus_channel")
        listener.execute("NOTIFY corpus_channel, 'to self'")
        with psycopg_connect(env, sslmode="disable", autocommit=True) as other:
            other.execute("SELECT pg_notify('corpus_channel', 'from another session')")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=2)]
        expect(
            got,
            [("corpus_channel", "to self"), ("corpus_channel", "from another session")],
            "notifications",
        )
        listener.execute("UNLISTEN *")


@checks("psycopg-listen-notify")
def _check_listen_notify(traces: Sequence[Trace]) -> None:
    listener, other = convs(traces, 2)
    common_startup(listener, ssl_request=False)
    common_startup(other, ssl_request=False)
    notes = listener.be("A")
    assert len(notes) == 2, listener
    assert b"to self" in notes[0].body and b"from another session" in notes[1].body
    # To self: delivered after NOTIFY's CommandComplete, before its ReadyForQuery.
    after_notify = listener.b[listener.b.index(notes[0]) - 1 : listener.b.index(notes[0]) + 2]
    assert [m.kind for m in after_notify] == ["C", "A", "Z"], after_notify
    assert after_notify[0].body == b"NOTIFY\0", after_notify
    # The second one arrived with no request outstanding: the last frontend message
    # before it had already been answered by a ReadyForQuery.
    last_f = max(m.seq for m in listener.f if m.seq < notes[1].seq)
    assert any(last_f < z.seq < notes[1].seq for z in listener.be("Z")), listener
    # It arrived in a chunk of its own, not glued to a reply.
    idle_chunk = listener.trace.chunks[notes[1].seq].data
    assert idle_chunk[:1] == b"A", idle_chunk[:20]
    assert not other.be("A"), other
    assert "UNLISTEN" in listener.tags(), listener.tags()


def _cancel_when_running(env: Env, conn: Any, marker: str) -> threading.Thread:
    """Start a thread that calls conn.cancel_safe() once the server shows ``marker``
    running (polled directly on the server, so the polling is not recorded)."""

    def run() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = env.server.execute(
                "SELECT count(*) FROM pg_stat_activity "
                f"WHERE state = 'active' AND query LIKE '%{marker}%' "
                "AND pid <> pg_backend_pid()",
                dbname=env.dbname,
            )
            if int(running.strip() or 0):
                break
            time.sleep(0.05)
        conn.cancel_safe(timeout=10)

    t = threading.Thread(target=run, name="corpus-cancel", daemon=True)
    t.start()
    return t


def _psycopg_cancel(env: Env, **extra: str) -> None:
    import psycopg

    with psycopg_connect(env, autocommit=True, **extra) as conn:
        marker = "corpus_cancel_me"
        t = _cancel_when_running(env, conn, marker)
        cancelled = False
        try:
            conn.execute(f"SELECT pg_sleep(20) AS {marker}")
        except psycopg.errors.QueryCanceled:
            cancelled = True
        t.join(15)
        expect(cancelled, True, "query cancelled")
        expect(conn.execute("SELECT 'alive'").fetchone(), ("alive",), "after cancel")


@scenario(
    "psycopg-cancel",
    client="psycopg",
    connections=2,
    description="cancel_safe() from another thread during pg_sleep: the second connection "
    "carries a 16-byte CancelRequest, the first gets 57014",
)
def psycopg_cancel(env: Env) -> None:
    _psycopg_cancel(env, sslmode="disable")


def _check_cancel(traces: Sequence[Trace], key_len: int) -> None:
    victim, canceller = convs(traces, 2)
    assert "57014" in victim.error_codes(), victim
    (bkd,) = victim.be("K")
    assert len(bkd.body) == 4 + key_len, len(bkd.body)
    (req,) = canceller.fe("CancelRequest")
    assert req.length == 12 + key_len, req.length
    assert req.body[4:] == bkd.body, "CancelRequest does not carry the BackendKeyData"
    assert not [m for m in canceller.b if m.kind != "ssl-answer"], canceller


@checks("psycopg-cancel")
def _check_cancel_30(traces: Sequence[Trace]) -> None:
    _check_cancel(traces, 4)
    common_startup(convs(traces, 2)[0], ssl_request=False)


@scenario(
    "psycopg-large-messages",
    client="psycopg",
    description="client messages over 64 KiB (Parse, Bind, simple Query) and a server DataRow "
    "over 64 KiB and one over 1 MiB",
)
def psycopg_large_messages(env: Env) -> None:
    import psycopg

    big_text = "x" * 100_000
    with psycopg_connect(env, sslmode="disable", autocommit=True) as conn:
        # Without parameters psycopg sends a simple Query > 64 KiB.
        got = conn.execute(f"SELECT length('{big_text}')").fetchone()
        expect(got, (100_000,), "query")
        # Parse > 64 KiB: a parameter plus a big literal in the statement text.
        got = conn.execute(f"SELECT length('{big_text}') + %s", (1,)).fetchone()
        expect(got, (100_001,), "parse")
        # Bind > 64 KiB: a big parameter.
        got = conn.execute("SELECT length(%s), md5(%s)", (big_text, big_text)).fetchone()
        expect(got and got[0], 100_000, "bind")
        # ClientCursor merges the values in and sends a simple Query.
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("SELECT length(%s) AS simple", ("y" * 70_000,))
            expect(cur.fetchone(), (70_000,), "simple query")
        # DataRows > 64 KiB and > 1 MiB from the server.
        got = conn.execute("SELECT repeat('z', 100000)").fetchone()
        expect(len(got[0]) if got else 0, 100_000, "100 kB row")
        got = conn.execute("SELECT repeat('w', 1100000)").fetchone()
        expect(len(got[0]) if got else 0, 1_100_000, "1.1 MB row")


@checks("psycopg-large-messages")
def _check_large_messages(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    assert any(m.length > 65536 for m in c.fe("P")), "no Parse > 64 KiB"
    assert any(m.length > 65536 for m in c.fe("B")), "no Bind > 64 KiB"
    assert any(m.length > 65536 for m in c.fe("Q")), "no Query > 64 KiB"
    rows = sorted(m.length for m in c.be("D"))
    assert rows[-1] > 1 << 20 and rows[-2] > 65536, rows[-3:]
    # The big messages were received in several chunks.
    assert max(len(x) for x in c.trace.chunks_of("B")) < rows[-1], "expected a split DataRow"


@scenario(
    "psycopg-auth-scram",
    client="psycopg",
    auth="scram",
    description="SCRAM-SHA-256 authentication by libpq: R10, SASLInitialResponse, R11, "
    "SASLResponse, R12, R0",
)
def psycopg_auth_scram(env: Env) -> None:
    with psycopg_connect(env, "scram_user", sslmode="disable") as conn:
        expect(conn.execute("SELECT current_user").fetchone(), ("scram_user",), "user")


@checks("psycopg-auth-scram")
def _check_auth_scram(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    check_scram(c)


def check_scram(c: Conv) -> None:
    assert c.auth_codes() == [10, 11, 12, 0], c.auth_codes()
    assert b"SCRAM-SHA-256\0" in c.be("R")[0].body
    first, final = c.fe("p")
    assert first.body.startswith(b"SCRAM-SHA-256\0"), first.body[:40]
    assert b"n,,n=" in first.body, first.body
    assert final.body.startswith(b"c=biws,r="), final.body[:40]


@scenario(
    "psycopg-auth-md5",
    client="psycopg",
    auth="md5",
    description="md5 authentication by libpq: R5 + salt, PasswordMessage md5<hex>",
)
def psycopg_auth_md5(env: Env) -> None:
    with psycopg_connect(env, "md5_user", sslmode="disable") as conn:
        expect(conn.execute("SELECT current_user").fetchone(), ("md5_user",), "user")


def check_md5(c: Conv) -> None:
    assert c.auth_codes() == [5, 0], c.auth_codes()
    assert len(c.be("R")[0].body) == 8, "R5 carries a 4-byte salt"
    (pw,) = c.fe("p")
    assert pw.body.startswith(b"md5") and len(pw.body) == 3 + 32 + 1, pw.body


@checks("psycopg-auth-md5")
def _check_auth_md5(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    check_md5(c)


# --- PostgreSQL 18 ---------------------------------------------------------------------


@scenario(
    "psycopg-pg18-protocol-3.2",
    client="psycopg",
    server=18,
    protocol="3.2",
    description="protocol 3.2 on PostgreSQL 18 (max_protocol_version=3.2): startup 3.2, "
    "BackendKeyData with a 32-byte key",
)
def psycopg_pg18_protocol_32(env: Env) -> None:
    with psycopg_connect(env, sslmode="prefer", max_protocol_version="3.2") as conn:
        expect(conn.pgconn.protocol_version, 3, "protocol major")
        expect(conn.execute("SELECT 32 AS minor").fetchone(), (32,), "query")
        expect(conn.info.server_version // 10000, 18, "server major")


@checks("psycopg-pg18-protocol-3.2")
def _check_pg18_protocol_32(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    assert c.startup_version() == (3, 2), c.startup_version()
    (k,) = c.be("K")
    assert len(k.body) == 36, len(k.body)
    assert not c.be("v"), "PG 18 accepts 3.2 without NegotiateProtocolVersion"


@scenario(
    "psycopg-pg18-cancel-3.2",
    client="psycopg",
    server=18,
    protocol="3.2",
    connections=2,
    description="cancel_safe() under protocol 3.2 on PostgreSQL 18: 44-byte CancelRequest "
    "with the 32-byte key, 57014",
)
def psycopg_pg18_cancel_32(env: Env) -> None:
    _psycopg_cancel(env, sslmode="disable", max_protocol_version="3.2")


@checks("psycopg-pg18-cancel-3.2")
def _check_pg18_cancel_32(traces: Sequence[Trace]) -> None:
    _check_cancel(traces, 32)
    victim = convs(traces, 2)[0]
    assert victim.startup_version() == (3, 2), victim.startup_version()


@scenario(
    "psycopg-pg18-protocol-3.0",
    client="psycopg",
    server=18,
    description="a plain protocol 3.0 session against PostgreSQL 18 (libpq's default), for "
    "comparison: BackendKeyData with a 4-byte key",
)
def psycopg_pg18_protocol_30(env: Env) -> None:
    with psycopg_connect(env, sslmode="prefer") as conn:
        expect(conn.execute("SELECT %s::int + 1", (29,)).fetchone(), (30,), "query")
        conn.commit()


@checks("psycopg-pg18-protocol-3.0")
def _check_pg18_protocol_30(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    assert c.startup_version() == (3, 0), c.startup_version()
    (k,) = c.be("K")
    assert len(k.body) == 8, len(k.body)
    names = {name for name, _ in c.parameter_status()}
    assert {"search_path", "scram_iterations"} <= names, names


@scenario(
    "psycopg-pg18-parameter-status",
    client="psycopg",
    server=18,
    description="PostgreSQL 18's startup ParameterStatus set (with search_path and "
    "scram_iterations); SET search_path / application_name / TimeZone and RESET -> S",
)
def psycopg_pg18_parameter_status(env: Env) -> None:
    with psycopg_connect(env, sslmode="disable", autocommit=True) as conn:
        conn.execute("SET search_path TO corpus_ps, public")
        conn.execute("SET application_name TO 'corpus-ps'")
        conn.execute("SET TimeZone TO 'Europe/Paris'")
        conn.execute("RESET search_path")
        conn.execute("BEGIN")
        conn.execute("SET LOCAL search_path TO corpus_local")
        conn.execute("COMMIT")
        expect(conn.execute("SHOW search_path").fetchone(), ('"$user", public',), "reset")


@checks("psycopg-pg18-parameter-status")
def _check_pg18_parameter_status(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    ps = c.parameter_status()
    first_z = c.be("Z")[0].seq
    startup = {m.body.split(b"\0")[0].decode() for m in c.be("S") if m.seq <= first_z}
    assert "search_path" in startup and "scram_iterations" in startup, startup
    assert ("search_path", "corpus_ps, public") in ps, ps
    assert ("application_name", "corpus-ps") in ps, ps
    assert ("TimeZone", "Europe/Paris") in ps, ps
    assert ("search_path", "corpus_local") in ps, ps
    # Reported again after RESET and at COMMIT (SET LOCAL reverted).
    assert count(ps, ("search_path", '"$user", public')) >= 3, ps


# ---------------------------------------------------------------------------------------
# asyncpg


async def asyncpg_connect(env: Env, user: str = "trust_user", **kw: Any) -> Any:
    import asyncpg

    kw.setdefault("ssl", False)
    return await asyncpg.connect(
        host=env.host,
        port=env.port,
        user=user,
        password=env.users.get(user),
        database=env.dbname,
        timeout=10,
        **kw,
    )


@scenario(
    "asyncpg-prepared-binary",
    client="asyncpg",
    description="asyncpg prepare(): SSLRequest refused, startup with the quoted "
    "client_encoding 'utf-8', named Parse + Describe S + Flush without Sync, then "
    "Bind/Execute/Sync with binary parameters and results",
)
def asyncpg_prepared_binary(env: Env) -> None:
    async def main() -> None:
        conn = await asyncpg_connect(env, ssl="prefer")
        try:
            stmt = await conn.prepare(
                "SELECT $1::int8 * 3 AS triple, $2::text || '!' AS shout, "
                "$3::float8 AS f, now() - now() AS zero, ARRAY[$1::int8, 2] AS arr"
            )
            for i in range(3):
                row = await stmt.fetchrow(i, f"s{i}", i / 2)
                expect(
                    (row["triple"], row["shout"], row["f"], list(row["arr"])),
                    (3 * i, f"s{i}!", i / 2, [i, 2]),
                    "row",
                )
            expect([a.name for a in stmt.get_attributes()][:2], ["triple", "shout"], "attrs")
        finally:
            await conn.close()

    asyncio.run(main())


@checks("asyncpg-prepared-binary")
def _check_asyncpg_prepared(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    params = c.startup_params()
    assert params["client_encoding"] == "'utf-8'", params  # quoted, as asyncpg sends it
    names = [n for n in c.parse_names() if n.startswith("__asyncpg_stmt_")]
    assert names, c.parse_names()
    assert c.fe("H"), "no Flush"
    # The Parse + Describe of the statement went out with a Flush, no Sync.
    parse = next(m for m in c.fe("P") if m.body.startswith(names[-1].encode()))
    after = [m.kind for m in c.f if m.seq == parse.seq]
    assert "D" in after and "H" in after and "S" not in after, after
    assert any(fmts and set(fmts) == {1} for fmts in c.bind_result_formats()), "no binary"
    assert len(c.be("t")) >= 1, c


@scenario(
    "asyncpg-cursor-prefetch",
    client="asyncpg",
    description="asyncpg cursor with prefetch inside a transaction: Execute with max rows "
    "-> PortalSuspended s, repeated, then CommandComplete",
)
def asyncpg_cursor_prefetch(env: Env) -> None:
    async def main() -> None:
        conn = await asyncpg_connect(env)
        try:
            seen = []
            async with conn.transaction():
                async for rec in conn.cursor(
                    "SELECT g, md5(g::text) FROM generate_series(1, $1) g", 25, prefetch=10
                ):
                    seen.append(rec[0])
                cur = await conn.cursor("SELECT generate_series(1, 100)")
                first = await cur.fetch(7)
                await cur.forward(50)
                nxt = await cur.fetchrow()
            expect(seen, list(range(1, 26)), "cursor rows")
            expect(([r[0] for r in first], nxt[0] if nxt else None), (list(range(1, 8)), 58), "")
        finally:
            await conn.close()

    asyncio.run(main())


@checks("asyncpg-cursor-prefetch")
def _check_asyncpg_cursor(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    assert len(c.be("s")) >= 3, c
    assert 10 in c.execute_max_rows() and 7 in c.execute_max_rows(), c.execute_max_rows()
    assert "T" in c.statuses(), c.statuses()
    closes = [m.body for m in c.fe("C")]
    assert any(b.startswith(b"P__asyncpg_portal_") for b in closes), closes
    assert "MOVE 50" in c.tags(), c.tags()


@scenario(
    "asyncpg-copy",
    client="asyncpg",
    description="asyncpg COPY: introspection with Parse/Describe/Flush, then COPY as a "
    "simple Query with the CopyData written right behind it (before CopyInResponse may "
    "arrive): copy_records_to_table (binary), copy_to_table (text), a copy failing on a "
    "duplicate key, copy_from_table (csv), copy_from_query (binary; its "
    "argument is quoted by a server round trip ending in PortalSuspended)",
)
def asyncpg_copy(env: Env) -> None:
    own_table(env, "corpus_apg_copy", "id int PRIMARY KEY, name text, score float8")
    try:

        async def main() -> None:
            import asyncpg

            conn = await asyncpg_connect(env)
            try:
                res = await conn.copy_records_to_table(
                    "corpus_apg_copy",
                    records=[(i, f"rec {i}", i * 1.5) for i in range(1, 31)],
                    columns=["id", "name", "score"],
                )
                expect(res, "COPY 30", "records")
                src = io.BytesIO(b"".join(b"%d\tfile %d\t0.5\n" % (i, i) for i in range(31, 41)))
                res = await conn.copy_to_table("corpus_apg_copy", source=src, format="text")
                expect(res, "COPY 10", "to_table")
                failed = False
                try:
                    await conn.copy_records_to_table(
                        "corpus_apg_copy", records=[(41, "ok", 0.0), (1, "duplicate", 0.0)]
                    )
                except asyncpg.UniqueViolationError:
                    failed = True
                expect(failed, True, "duplicate key in copy")
                out = io.BytesIO()
                res = await conn.copy_from_table("corpus_apg_copy", output=out, format="csv")
                expect((res, out.getvalue().count(b"\n")), ("COPY 40", 40), "from_table")
                out = io.BytesIO()
                res = await conn.copy_from_query(
                    "SELECT id, name FROM corpus_apg_copy WHERE id > $1 ORDER BY id",
                    35,
                    output=out,
                    format="binary",
                )
                expect(res, "COPY 5", "from_query")
                expect(out.getvalue()[:11], b"PGCOPY\n\xff\r\n\0", "binary signature")
            finally:
                await conn.close()

        asyncio.run(main())
    finally:
        drop(env, "corpus_apg_copy")


@checks("asyncpg-copy")
def _check_asyncpg_copy(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    assert [m.body[0] for m in c.be("G")] == [1, 0, 1], c
    assert [m.body[0] for m in c.be("H")] == [0, 1], c
    assert len(c.fe("c")) == 3 and not c.fe("f"), c
    assert c.error_codes() == ["23505"], c.error_codes()
    copies = [m.body.decode() for m in c.fe("Q") if m.body.startswith(b"COPY")]
    assert len(copies) == 5, copies
    assert c.fe("H") and c.be("s"), c
    assert c.tags().count("COPY 30") == 1 and "COPY 5" in c.tags(), c.tags()


@scenario(
    "asyncpg-auth-scram",
    client="asyncpg",
    auth="scram",
    description="SCRAM-SHA-256 authentication by asyncpg's own implementation",
)
def asyncpg_auth_scram(env: Env) -> None:
    async def main() -> None:
        conn = await asyncpg_connect(env, "scram_user")
        try:
            expect(await conn.fetchval("SELECT current_user"), "scram_user", "user")
        finally:
            await conn.close()

    asyncio.run(main())


@checks("asyncpg-auth-scram")
def _check_asyncpg_scram(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    check_scram(c)


@scenario(
    "asyncpg-statement-cache",
    client="asyncpg",
    description="asyncpg's statement cache: the same query run 6 times is parsed once "
    "(named statement) and then only bound and executed",
)
def asyncpg_statement_cache(env: Env) -> None:
    async def main() -> None:
        conn = await asyncpg_connect(env)
        try:
            for i in range(6):
                got = await conn.fetchval("SELECT $1::int * $1::int AS square", i)
                expect(got, i * i, "square")
            for i in range(3):
                await conn.execute("SELECT pg_catalog.set_config('corpus.k', $1, false)", str(i))
            expect(await conn.fetchval("SHOW corpus.k"), "2", "custom GUC")
        finally:
            await conn.close()

    asyncio.run(main())


@checks("asyncpg-statement-cache")
def _check_asyncpg_cache(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    squares = [m for m in c.fe("P") if b"square" in m.body]
    assert len(squares) == 1, squares
    name = squares[0].body.split(b"\0")[0]
    assert name.startswith(b"__asyncpg_stmt_"), name
    binds = [m for m in c.fe("B") if m.body.split(b"\0")[1] == name]
    assert len(binds) == 6, len(binds)


# ---------------------------------------------------------------------------------------
# pg8000


def pg8000_meta(env: Env) -> None:
    """Name the client with its version in meta.json (make_corpus takes a client id with
    a digit in it, like "pg8000", as already carrying its version)."""
    import importlib.metadata

    env.extra_meta["client"] = f"pg8000 {importlib.metadata.version('pg8000')}"


@scenario(
    "pg8000-startup-autocommit",
    client="pg8000",
    description="pg8000: SSLRequest refused, startup with application_name and no "
    "client_encoding, then its three round trips per query (P H S, D H S, B H E H S) with "
    "unnamed statements in autocommit",
)
def pg8000_startup_autocommit(env: Env) -> None:
    import pg8000.native

    pg8000_meta(env)
    conn = pg8000.native.Connection(
        user="trust_user",
        host=env.host,
        port=env.port,
        database=env.dbname,
        application_name="pgsansio-corpus-pg8000",
        timeout=10,
    )
    try:
        expect(conn.run("SELECT :a::int + 1 AS x", a=41), [[42]], "param query")
        expect(conn.run("SELECT 'two', 2"), [["two", 2]], "plain query")
        expect(conn.run("SHOW client_encoding"), [["UTF8"]], "client_encoding")
        conn.run("CREATE TEMP TABLE corpus_p8k_tmp (id int)")
        conn.run("INSERT INTO corpus_p8k_tmp VALUES (:a), (:b)", a=1, b=2)
        expect(conn.run("SELECT count(*) FROM corpus_p8k_tmp"), [[2]], "count")
    finally:
        conn.close()


@checks("pg8000-startup-autocommit")
def _check_pg8000_startup(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    params = c.startup_params()
    assert params == {
        "user": "trust_user",
        "database": "pgsansio_test",
        "application_name": "pgsansio-corpus-pg8000",
    }, params
    assert set(c.parse_names()) == {""}, c.parse_names()
    assert "PHSDHSBHEHS" in c.ftypes(), c.ftypes()
    assert set(c.statuses()) == {"I"}, c.statuses()


@scenario(
    "pg8000-md5-transaction",
    client="pg8000",
    auth="md5",
    description="pg8000 md5 authentication and a DB-API transaction: implicit BEGIN, "
    "inserts, commit, a rolled-back transaction",
)
def pg8000_md5_transaction(env: Env) -> None:
    import pg8000.dbapi

    pg8000_meta(env)
    own_table(env, "corpus_p8k_tx", "id int PRIMARY KEY, name text")
    try:
        conn = pg8000.dbapi.connect(
            user="md5_user",
            password=env.users["md5_user"],
            host=env.host,
            port=env.port,
            database=env.dbname,
            timeout=10,
        )
        try:
            cur = conn.cursor()
            cur.execute("INSERT INTO corpus_p8k_tx VALUES (%s, %s)", (1, "kept"))
            cur.executemany("INSERT INTO corpus_p8k_tx VALUES (%s, %s)", [(2, "b"), (3, "c")])
            conn.commit()
            cur.execute("DELETE FROM corpus_p8k_tx")
            conn.rollback()
            cur.execute("SELECT count(*) FROM corpus_p8k_tx")
            expect(cur.fetchone(), [3], "rows after rollback")
            conn.commit()
        finally:
            conn.close()
    finally:
        drop(env, "corpus_p8k_tx")


@checks("pg8000-md5-transaction")
def _check_pg8000_md5(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    check_md5(c)
    qs = c.queries()
    assert qs.count("begin transaction") == 3, qs
    assert "COMMIT" in c.tags() and "ROLLBACK" in c.tags(), c.tags()
    assert "T" in c.statuses(), c.statuses()


@scenario(
    "pg8000-auth-scram",
    client="pg8000",
    auth="scram",
    description="SCRAM-SHA-256 authentication by pg8000 (scramp)",
)
def pg8000_auth_scram(env: Env) -> None:
    import pg8000.native

    pg8000_meta(env)
    conn = pg8000.native.Connection(
        user="scram_user",
        password=env.users["scram_user"],
        host=env.host,
        port=env.port,
        database=env.dbname,
        timeout=10,
    )
    try:
        expect(conn.run("SELECT current_user"), [["scram_user"]], "user")
    finally:
        conn.close()


@checks("pg8000-auth-scram")
def _check_pg8000_scram(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    check_scram(c)


# ---------------------------------------------------------------------------------------
# PgJDBC


def pgjdbc_jar() -> pathlib.Path:
    """The PgJDBC jar: $PGJDBC_JAR, else the local Maven repository."""
    env_jar = os.environ.get("PGJDBC_JAR")
    if env_jar:
        if not pathlib.Path(env_jar).is_file():
            raise RuntimeError(f"PGJDBC_JAR={env_jar} is not a file")
        return pathlib.Path(env_jar)
    m2 = pathlib.Path.home() / ".m2" / "repository" / "org" / "postgresql" / "postgresql"
    candidates = [m2 / PGJDBC_VERSION / f"postgresql-{PGJDBC_VERSION}.jar"]
    candidates.extend(sorted(m2.glob("42.*/postgresql-42.*.jar"), reverse=True))
    for jar in candidates:
        if jar.is_file():
            return jar
    raise RuntimeError(
        "PgJDBC jar not found: set PGJDBC_JAR=/path/to/postgresql-42.x.jar or fetch it into "
        f"the local Maven repository (mvn dependency:get "
        f"-Dartifact=org.postgresql:postgresql:{PGJDBC_VERSION}); looked at " + str(m2)
    )


def run_pgjdbc(env: Env, mode: str, user: str = "trust_user", sslmode: str = "disable") -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java not found on PATH (PgJDBC scenarios need a JDK >= 11)")
    jar = pgjdbc_jar()
    version = re.search(r"(\d+\.\d+\.\d+)", jar.name)
    env.extra_meta["client"] = "PgJDBC" + (f" {version.group(1)}" if version else f" ({jar.name})")
    password = env.users.get(user) or "-"
    argv = [java, "-cp", str(jar), str(JAVA_PROGRAM), env.host, str(env.port), env.dbname]
    proc = env.run([*argv, user, password, sslmode, mode], timeout=120)
    return proc.stdout.decode()


@scenario(
    "pgjdbc-prepare-threshold",
    client="pgjdbc",
    description="PgJDBC: SSLRequest refused, SET application_name, one PreparedStatement "
    "executed 7 times: unnamed P B D E S four times, then named S_1 parsed once and only "
    "B E S with binary results",
)
def pgjdbc_prepare_threshold(env: Env) -> None:
    out = run_pgjdbc(env, "prepared", sslmode="prefer")
    expect(out.count("prepared "), 7, f"java output {out!r}")


@checks("pgjdbc-prepare-threshold")
def _check_pgjdbc_prepared(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=True)
    names = c.parse_names()
    assert names.count("") == 4 and names.count("S_1") == 1, names
    s1_binds = [m for m in c.fe("B") if m.body.startswith(b"\0S_1\0")]
    assert len(s1_binds) == 3, s1_binds
    assert any(1 in f for f in c.bind_result_formats()), "no binary result columns"
    assert c.queries()[0].startswith("SET application_name"), c.queries()


@scenario(
    "pgjdbc-transaction",
    client="pgjdbc",
    description="PgJDBC with setAutoCommit(false): Query BEGIN pipelined in one flight with "
    "P B D E S (two ReadyForQuery outstanding), COMMIT/ROLLBACK as named statements",
)
def pgjdbc_transaction(env: Env) -> None:
    own_table(env, "corpus_jdbc_tx", "id int PRIMARY KEY, note text")
    try:
        out = run_pgjdbc(env, "transaction")
        expect(out.strip().splitlines()[-1], "count 3", "java output")
    finally:
        drop(env, "corpus_jdbc_tx")


@checks("pgjdbc-transaction")
def _check_pgjdbc_transaction(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    begins = [m for m in c.fe("Q") if m.body == b"BEGIN\0"]
    assert len(begins) == 3, c
    for begin in begins:
        # P B D E S after BEGIN were sent before BEGIN's ReadyForQuery came back, so two
        # ReadyForQuery were outstanding.
        i = c.f.index(begin)
        flight = c.f[i + 1 : i + 6]
        assert "".join(m.kind for m in flight) == "PBDES", flight
        z = next(m for m in c.be("Z") if m.seq > begin.seq)
        assert flight[-1].seq < z.seq, "BEGIN was not pipelined"
    assert "COMMIT" in c.queries() and "ROLLBACK" in c.queries(), c.queries()
    assert any(n.startswith("S_") for n in c.parse_names()), c.parse_names()
    assert "T" in c.statuses(), c.statuses()


@scenario(
    "pgjdbc-batch-scram",
    client="pgjdbc",
    auth="scram",
    description="PgJDBC SCRAM-SHA-256 authentication, PreparedStatement.executeBatch (one "
    "Parse, ten B E before a single Sync) and a Statement batch",
)
def pgjdbc_batch_scram(env: Env) -> None:
    own_table(env, "corpus_jdbc_batch", "id int PRIMARY KEY, note text")
    try:
        out = run_pgjdbc(env, "batch", user="scram_user")
        lines = out.strip().splitlines()
        expect(lines, ["batch 10 10", "statements 5 2", "count 8"], "java output")
    finally:
        drop(env, "corpus_jdbc_batch")


@checks("pgjdbc-batch-scram")
def _check_pgjdbc_batch(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    check_scram(c)
    types = c.ftypes()
    assert "BEBEBEBEBE" in types.replace("D", ""), types
    inserts = [q for q in c.queries() if q.startswith("INSERT INTO corpus_jdbc_batch")]
    assert 1 <= len(inserts) <= 2, inserts
    assert c.tags().count("INSERT 0 1") == 10, c.tags()


# ---------------------------------------------------------------------------------------
# node-postgres


def run_node(env: Env, mode: str, user: str = "trust_user") -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("node and npm are needed for the node-postgres scenarios")
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").is_file():
        env.run([npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"], timeout=300)
    # Env.run drops inherited PG* variables and points PGHOST/PGPORT/PGDATABASE at the
    # relay; node-postgres reads those same variables.
    child_env = {"PGUSER": user}
    password = env.users.get(user)
    if password is not None:
        child_env["PGPASSWORD"] = password
    proc = env.run([node, str(NODE_DIR / "scenario.js"), mode], env=child_env, timeout=60)
    return proc.stdout.decode()


@scenario(
    "node-pg-queries",
    client="node-pg",
    description="node-postgres: simple Query without parameters, unnamed P B D E S with "
    "parameters, a named prepared query parsed once and reused, a transaction, an error in "
    "the extended protocol and one in a simple Query",
)
def node_pg_queries(env: Env) -> None:
    own_table(env, "corpus_node_items", "id int PRIMARY KEY, name text")
    try:
        out = run_node(env, "queries")
        expect(
            out.strip().splitlines(),
            [
                "simple 1 simple",
                "param 42",
                "named n1 10",
                "named n2 20",
                "named n3 30",
                "rows 1:alpha,2:beta",
                "error 22012",
                "error 42P01",
                "after 2",
            ],
            "node output",
        )
    finally:
        drop(env, "corpus_node_items")


@checks("node-pg-queries")
def _check_node_queries(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    assert c.fe("Q")[0].body.startswith(b"SELECT 1 AS one"), c.fe("Q")[0]
    names = c.parse_names()
    assert names.count("corpus_named") == 1 and "" in names, names
    named_binds = [m for m in c.fe("B") if m.body.startswith(b"\0corpus_named\0")]
    assert len(named_binds) == 3, named_binds
    assert c.error_codes() == ["22012", "42P01"], c.error_codes()
    assert "PBDES" in c.ftypes(), c.ftypes()


@scenario(
    "node-pg-auth-md5",
    client="node-pg",
    auth="md5",
    description="md5 authentication by node-postgres",
)
def node_pg_auth_md5(env: Env) -> None:
    out = run_node(env, "auth", user="md5_user")
    expect(out.strip(), "user md5_user", "node output")


@checks("node-pg-auth-md5")
def _check_node_md5(traces: Sequence[Trace]) -> None:
    (c,) = convs(traces, 1)
    common_startup(c, ssl_request=False)
    check_md5(c)
