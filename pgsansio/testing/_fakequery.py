"""The query phase of :class:`pgsansio.testing.fakepg.FakeServer`.

Split from ``fakepg.py`` (startup, authentication, the sans-IO plumbing) to keep
modules short. This is the part a pooler exercises after login: simple and extended
query, transactions, session parameters, prepared statements and portals.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgsansio.protocol import (
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyFail,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Event,
    Execute,
    Field,
    Flush,
    FunctionCall,
    NoData,
    NoticeResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    Terminate,
)

from . import fakesql
from .fakesql import BOOL, INT4, INT8, TEXT, VOID, Expr, Plan, SqlError

if TYPE_CHECKING:
    from .fakepg import Database

_SIZES = {INT4: 4, INT8: 8, BOOL: 1, VOID: 4}
_ABORTED = "current transaction is aborted, commands ignored until end of transaction block"

Row = tuple[str | None, ...]


@dataclass
class _Result:
    tag: str
    fields: tuple[Field, ...] | None = None
    rows: list[Row] = field(default_factory=list)
    sleep: float = 0.0
    notices: list[tuple[str, str]] = field(default_factory=list)  # (sqlstate, message)


@dataclass
class _Prepared:
    name: str
    plan: Plan | None  # None: the empty query
    param_types: tuple[int, ...]


@dataclass
class _Portal:
    prepared: _Prepared
    params: tuple[str | None, ...]
    result_formats: tuple[int, ...]
    tag: str | None
    result: _Result | None = None
    pos: int = 0


def _format_for(formats: tuple[int, ...], i: int) -> int:
    if not formats:
        return 0
    return formats[i] if len(formats) > 1 else formats[0]


def _encode(value: str | None, oid: int, fmt: int) -> bytes | None:
    if value is None:
        return None
    if fmt == 1:
        if oid in (INT4, INT8):
            return int(value).to_bytes(_SIZES[oid], "big", signed=True)
        if oid == BOOL:
            return b"\x01" if value == "t" else b"\x00"
        if oid == VOID:
            return b""
    return value.encode("utf-8", "surrogateescape")


def _decode_param(raw: bytes | None, oid: int, fmt: int) -> str | None:
    if raw is None:
        return None
    if fmt == 1 and oid in (INT4, INT8) and len(raw) == _SIZES[oid]:
        return str(int.from_bytes(raw, "big", signed=True))
    if fmt == 1 and oid == BOOL and len(raw) == 1:
        return "t" if raw != b"\x00" else "f"
    return raw.decode("utf-8", "surrogateescape")


def _param_types(plan: Plan | None, declared: tuple[int, ...]) -> tuple[int, ...]:
    """The type of each ``$n``: declared in Parse, else a cast, else text."""
    if plan is None:
        return declared
    count = max(plan.params, len(declared))
    types = [declared[i] if i < len(declared) and declared[i] else 0 for i in range(count)]
    todo = list(plan.exprs) + [e for row in plan.rows for e in row]
    while todo:
        e = todo.pop()
        todo.extend(e.args)
        if e.kind == "param" and e.value is not None and e.cast and not types[int(e.value) - 1]:
            types[int(e.value) - 1] = e.cast
    return tuple(t or TEXT for t in types)


class QueryMixin:
    """Session state and the query-phase message handlers of a fake backend."""

    # Provided by FakeServer.
    db: Database
    now: float
    pid: int
    closed: bool
    history: deque[tuple[float, str | None, str]]

    def __init__(self) -> None:
        self.gucs: dict[str, str] = {}
        self.session_defaults: dict[str, str] = {}
        self._reported: dict[str, str] = {}
        self.explicit = False  # inside BEGIN ... COMMIT
        self.aborted = False  # ... and failed: status E
        self.in_txn = False  # a transaction, implicit or explicit, is open
        self.transactions = 0
        self.statements: dict[str, _Prepared] = {}
        self.portals: dict[str, _Portal] = {}
        self._snapshot: dict[str, str] = {}
        self._session_sets: dict[str, str] = {}
        self._writes: list[tuple[str, Row]] = []
        self._deleted: set[str] = set()
        self._failed = False  # extended query: discarding until Sync
        self._queue: deque[fakesql.Statement] = deque()
        self._multi = False
        self._owner: str | None = None

    # Provided by FakeServer.
    def _send(self, event: Event) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _start_sleep(self, seconds: float, done: Callable[[SqlError | None], None]) -> None:
        raise NotImplementedError

    @property
    def status(self) -> str:
        """The transaction status ReadyForQuery would report now."""
        return "E" if self.aborted else "T" if self.explicit else "I"

    # --- transactions -------------------------------------------------------------

    def _ensure_txn(self) -> None:
        if not self.in_txn:
            self.in_txn = True
            self._snapshot = dict(self.gucs)
            self._session_sets = {}
            self._writes = []
            self._deleted = set()

    def _commit(self) -> None:
        tables = self.db.tables
        for table in self._deleted:
            tables[table] = []
        for table, row in self._writes:
            tables.setdefault(table, []).append(row)
        self.gucs = {**self._snapshot, **self._session_sets}
        self._end_txn()

    def _rollback(self) -> None:
        if self.in_txn:
            self.gucs = dict(self._snapshot)
        self._end_txn()

    _rollback_all = _rollback

    def _end_txn(self) -> None:
        if self.in_txn:
            self.transactions += 1
        self.in_txn = self.explicit = self.aborted = False
        self._writes, self._deleted = [], set()
        self.portals.clear()  # portals are not WITH HOLD: they die with the transaction

    def _error(self, exc: SqlError, extended: bool = False) -> None:
        self._send(ErrorResponse.build(exc.sqlstate, exc.message, exc.severity))
        if exc.severity in ("FATAL", "PANIC"):
            self._close()
            return
        self._failed = extended
        if self.explicit:
            self.aborted = True
        else:
            self._rollback()

    def _ready(self) -> None:
        if self.in_txn and not self.explicit:
            self._commit()
        for name in fakesql.REPORTED:
            if self.gucs[name] != self._reported.get(name):
                self._reported[name] = self.gucs[name]
                self._send(ParameterStatus(name, self.gucs[name]))
        status = self.status
        self._send(ReadyForQuery(status))
        if status == "I":
            self._owner = None

    def _check_owner(self, tag: str | None, text: str) -> None:
        if tag is None:
            return
        if self._owner is None:
            self._owner = tag
        elif self._owner != tag:
            recent = [(round(t, 4), g, s[:60]) for t, g, s in list(self.history)[-6:]]
            self.db.violation(
                f"backend {self.pid}: {tag}'s statement {text[:80]!r} ran inside a transaction "
                f"of {self._owner} (status {self.status}); recent statements: {recent}"
            )

    # --- dispatch -------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        kind = type(event)
        if kind is Terminate:
            self._close()
        elif self._failed and kind is not Sync:
            pass  # "the backend discards frontend messages until a Sync"
        elif isinstance(event, Query):
            self._simple_query(event.sql)
        elif isinstance(event, Parse):
            self._parse(event)
        elif isinstance(event, Bind):
            self._bind(event)
        elif isinstance(event, Describe):
            self._describe(event)
        elif isinstance(event, Execute):
            self._execute_message(event)
        elif isinstance(event, Close):
            if event.kind == "S":
                self.statements.pop(event.name, None)
            else:
                self.portals.pop(event.name, None)
            self._send(CloseComplete())
        elif kind is Sync:
            self._failed = False
            self._ready()
        elif isinstance(event, FunctionCall):
            self._error(SqlError("0A000", "the fake server has no fast-path functions"))
            self._ready()
        elif isinstance(event, (Flush, CopyData, CopyDone, CopyFail)):
            pass  # we never buffer output; COPY messages outside COPY are ignored

    # --- simple query ------------------------------------------------------------------

    def _simple_query(self, sql: str) -> None:
        self.statements.pop("", None)  # exec_simple_query drops the unnamed statement
        try:
            statements = fakesql.split(sql)
        except SqlError as exc:
            self._error(exc)
            self._ready()
            return
        if not statements:
            self._send(EmptyQueryResponse())
            self._ready()
            return
        self._queue = deque(statements)
        self._multi = len(statements) > 1
        self._continue_query()

    def _continue_query(self) -> None:
        while self._queue:
            stmt = self._queue.popleft()
            try:
                plan = fakesql.parse(stmt)
                self._check_owner(plan.tag, stmt.text)
                result = self._run_plan(plan, ())
            except SqlError as exc:
                self._queue.clear()
                self._error(exc)
                break
            if result.sleep:
                self._start_sleep(result.sleep, functools.partial(self._slept, result=result))
                return
            self._emit_simple(result)
        if not self.closed:
            self._ready()

    def _slept(self, err: SqlError | None, *, result: _Result) -> None:
        if err is None:
            self._emit_simple(result)
        else:
            self._queue.clear()
            self._error(err)
        self._continue_query()

    def _emit_simple(self, result: _Result) -> None:
        self._notices(result)
        if result.fields is not None:
            self._send(RowDescription(result.fields))
            oids = [f.type_oid for f in result.fields]
            for row in result.rows:
                values = [_encode(v, oid, 0) for v, oid in zip(row, oids, strict=True)]
                self._send(DataRow(values))
        self._send(CommandComplete(result.tag))

    def _notices(self, result: _Result) -> None:
        for sqlstate, message in result.notices:
            self._send(NoticeResponse.build(sqlstate, message, "WARNING"))

    # --- executing a statement ----------------------------------------------------------

    def _fields(
        self, plan: Plan | None, types: tuple[int, ...], fmts: tuple[int, ...] = ()
    ) -> tuple[Field, ...] | None:
        if plan is None:
            return None
        if plan.kind in ("select", "series", "count"):
            oids = [self._expr_type(e, types) for e in plan.exprs]
            names = [e.name for e in plan.exprs]
        elif plan.kind == "select_table":
            rows = self._visible(plan.args[0] or "")
            width = len(rows[0]) if rows else 0
            oids, names = [TEXT] * width, [f"c{i + 1}" for i in range(width)]
        elif plan.kind == "show":
            oids, names = [TEXT], [fakesql.canonical_guc(plan.args[0] or "") or "?"]
        else:
            return None
        return tuple(
            Field(name, 0, 0, oid, _SIZES.get(oid, -1), -1, _format_for(fmts, i))
            for i, (name, oid) in enumerate(zip(names, oids, strict=True))
        )

    @staticmethod
    def _expr_type(e: Expr, types: tuple[int, ...]) -> int:
        if e.cast:
            return e.cast
        if e.kind == "param":
            i = int(e.value or 0) - 1
            return types[i] if i < len(types) else TEXT
        return e.type_oid

    def _visible(self, table: str) -> list[Row]:
        rows = [] if table in self._deleted else self.db.rows(table)
        return rows + [row for t, row in self._writes if t == table]

    def _run_plan(
        self, plan: Plan, params: tuple[str | None, ...], types: tuple[int, ...] = ()
    ) -> _Result:
        db = self.db
        db.stats["statements"] += 1
        self.history.append((self.now, plan.tag, plan.text))
        if db.on_statement is not None:
            db.on_statement(self, plan)  # type: ignore[arg-type]
        if self.aborted and not plan.is_transaction_exit:
            raise SqlError("25P02", _ABORTED)
        kind = plan.kind
        if kind in ("begin", "commit", "rollback"):
            return self._transaction_control(kind)
        self._ensure_txn()
        if kind in ("select", "series", "count", "select_table"):
            return self._select(plan, params, types)
        if kind in ("insert", "delete") and db.in_recovery:
            db.stats["read_only_refusals"] += 1
            raise SqlError("25006", f"cannot execute {kind.upper()} in a read-only transaction")
        if kind == "insert":
            db.wal_lsn += 100 * len(plan.rows)
            table = plan.args[0] or ""
            for row in plan.rows:
                self._writes.append((table, tuple(self._eval(e, params, None) for e in row)))
            return _Result(f"INSERT 0 {len(plan.rows)}")
        if kind == "delete":
            table = plan.args[0] or ""
            count = len(self._visible(table))
            self._deleted.add(table)
            self._writes = [(t, row) for t, row in self._writes if t != table]
            return _Result(f"DELETE {count}")
        if kind in ("set", "reset", "show"):
            return self._settings(plan)
        if kind == "discard":
            if plan.args[0] == "all":
                if self.explicit or self._multi:
                    raise SqlError("25001", "DISCARD ALL cannot run inside a transaction block")
                self._reset_all()
                self.statements.clear()
                self.portals.clear()
            return _Result(f"DISCARD {(plan.args[0] or '').upper()}")
        assert kind == "deallocate"
        name = plan.args[0]
        if name is None:
            unnamed = self.statements.get("")
            self.statements.clear()
            if unnamed is not None:
                self.statements[""] = unnamed
            return _Result("DEALLOCATE ALL")
        if name not in self.statements:
            raise SqlError("26000", f'prepared statement "{name}" does not exist')
        del self.statements[name]
        return _Result("DEALLOCATE")

    def _transaction_control(self, kind: str) -> _Result:
        if kind == "begin":
            if self.explicit:
                return _Result(
                    "BEGIN", notices=[("25001", "there is already a transaction in progress")]
                )
            self._ensure_txn()
            self.explicit = True
            return _Result("BEGIN")
        if not self.explicit:
            return _Result(
                kind.upper(), notices=[("25P01", "there is no transaction in progress")]
            )
        if kind == "commit" and not self.aborted:
            self._commit()
            return _Result("COMMIT")
        self._rollback()
        return _Result("ROLLBACK")

    def _select(
        self, plan: Plan, params: tuple[str | None, ...], types: tuple[int, ...]
    ) -> _Result:
        table = plan.args[0] if plan.args else None
        if table is not None and table not in self.db.tables and not self._visible(table):
            raise SqlError("42P01", f'relation "{table}" does not exist')
        fields = self._fields(plan, types)
        if plan.kind == "count":
            rows: list[Row] = [(str(len(self._visible(table or ""))),)]
            return _Result("SELECT 1", fields, rows)
        if plan.kind == "select_table":
            rows = self._visible(table or "")
            return _Result(f"SELECT {len(rows)}", fields, rows)
        if plan.kind == "series":
            low, high = (int(self._eval(e, params, None) or 0) for e in plan.exprs[0].args)
            rows = [(str(i),) for i in range(low, high + 1)]
            return _Result(f"SELECT {len(rows)}", fields, rows)
        sleep = [0.0]
        row = tuple(self._eval(e, params, sleep) for e in plan.exprs)
        return _Result("SELECT 1", fields, [row], sleep=sleep[0])

    def _eval(
        self, e: Expr, params: tuple[str | None, ...], sleep: list[float] | None
    ) -> str | None:
        if e.kind == "const":
            value = e.value
        elif e.kind == "param":
            value = params[int(e.value or 0) - 1]
        elif e.kind == "func":
            args = [self._eval(a, params, sleep) for a in e.args]
            value = self._call(e.value or "", args, sleep)
        elif e.kind == "case":
            cond, then, other = e.args
            taken = then if self._eval(cond, params, sleep) == "t" else other
            value = self._eval(taken, params, sleep)
        else:
            raise SqlError("42601", f"{e.kind} is not allowed here")
        if value is not None and e.cast in (INT4, INT8):
            try:
                value = str(int(value))
            except ValueError:
                raise SqlError(
                    "22P02", f'invalid input syntax for type integer: "{value}"'
                ) from None
        return value

    def _call(self, func: str, args: list[str | None], sleep: list[float] | None) -> str | None:
        if func == "pg_backend_pid":
            return str(self.pid)
        if func == "pg_is_in_recovery":
            return "t" if self.db.in_recovery else "f"
        if func in ("pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_last_wal_replay_lsn"):
            if (func != "pg_last_wal_replay_lsn") == self.db.in_recovery:
                if self.db.in_recovery:
                    raise SqlError("55000", "recovery is in progress")
                return None  # a primary that never was a standby has replayed nothing
            lsn = self.db.wal_lsn
            return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
        if func == "current_setting":
            name = fakesql.canonical_guc(args[0] or "")
            if name is None or name not in self.gucs:
                raise SqlError("42704", f'unrecognized configuration parameter "{args[0]}"')
            return self.gucs[name]
        try:
            number = float(args[0] or 0)
        except ValueError:
            raise SqlError(
                "22P02", f'invalid input syntax for type numeric: "{args[0]}"'
            ) from None
        if func == "pg_sleep":
            if sleep is None:
                raise SqlError("0A000", "pg_sleep() is only allowed in a select list")
            sleep[0] += max(number, 0.0)
            return ""
        if func == "pg_terminate_backend" and int(number) == self.pid:
            raise SqlError("57P01", "terminating connection due to administrator command", "FATAL")
        kind = "terminate" if func == "pg_terminate_backend" else "cancel"
        return "t" if self.db.signal(int(number), kind) else "f"

    # --- parameters -------------------------------------------------------------------

    def _settings(self, plan: Plan) -> _Result:
        raw = plan.args[0]
        if plan.kind == "reset" and raw is None:
            self._reset_all()
            return _Result("RESET")
        name = fakesql.canonical_guc(raw or "")
        if name is None:
            raise SqlError("42704", f'unrecognized configuration parameter "{raw}"')
        if plan.kind == "show":
            value = self.gucs.get(name, "")
            return _Result("SHOW", self._fields(plan, ()), [(value,)])
        if name in fakesql.READ_ONLY:
            raise SqlError("55P02", f'parameter "{name}" cannot be changed')
        given = plan.args[1] if plan.kind == "set" else None
        if given is None:
            value = self.session_defaults.get(name, fakesql.GUC_DEFAULTS.get(name, ""))
        else:
            value = fakesql.normalize_guc(name, given, self.gucs.get(name, ""))
        if plan.kind == "set" and plan.args[2] == "local":
            if not self.explicit:
                warning = ("25P01", "SET LOCAL can only be used in transaction blocks")
                return _Result("SET", notices=[warning])
            self.gucs[name] = value
            return _Result("SET")
        self.gucs[name] = self._session_sets[name] = value
        return _Result(plan.kind.upper())

    def _reset_all(self) -> None:
        for name, value in self.session_defaults.items():
            if name not in fakesql.READ_ONLY:
                self.gucs[name] = self._session_sets[name] = value
        for name in [n for n in self.gucs if n not in self.session_defaults]:
            self.gucs[name] = self._session_sets[name] = ""  # placeholders reset to ""

    # --- extended query -------------------------------------------------------------

    def _parse(self, msg: Parse) -> None:
        try:
            statements = fakesql.split(msg.query)
            if len(statements) > 1:
                raise SqlError(
                    "42601", "cannot insert multiple commands into a prepared statement"
                )
            plan = fakesql.parse(statements[0]) if statements else None
            if msg.name and msg.name in self.statements:
                raise SqlError("42P05", f'prepared statement "{msg.name}" already exists')
            if self.aborted and not (plan is not None and plan.is_transaction_exit):
                raise SqlError("25P02", _ABORTED)
        except SqlError as exc:
            self._error(exc, extended=True)
            return
        types = _param_types(plan, msg.param_types)
        self.statements[msg.name] = _Prepared(msg.name, plan, types)
        self._send(ParseComplete())

    def _bind(self, msg: Bind) -> None:
        try:
            prepared = self._statement(msg.statement)
            types = prepared.param_types
            if len(msg.params) != len(types):
                raise SqlError(
                    "08P01",
                    f"bind message supplies {len(msg.params)} parameters, but prepared "
                    f'statement "{msg.statement}" requires {len(types)}',
                )
            if msg.portal and msg.portal in self.portals:
                raise SqlError("42P03", f'portal "{msg.portal}" already exists')
            plan = prepared.plan
            if self.aborted and not (plan is not None and plan.is_transaction_exit):
                raise SqlError("25P02", _ABORTED)
        except SqlError as exc:
            self._error(exc, extended=True)
            return
        params = tuple(
            _decode_param(p, types[i], _format_for(msg.param_formats, i))
            for i, p in enumerate(msg.params)
        )
        tag = params[0][4:] if params and params[0] and params[0].startswith("tag:") else None
        if tag is None and plan is not None:
            tag = plan.tag
        self._ensure_txn()
        self.portals[msg.portal] = _Portal(prepared, params, msg.result_formats, tag)
        self._send(BindComplete())

    def _statement(self, name: str) -> _Prepared:
        prepared = self.statements.get(name)
        if prepared is None:
            if not name:
                raise SqlError("26000", "unnamed prepared statement does not exist")
            raise SqlError("26000", f'prepared statement "{name}" does not exist')
        return prepared

    def _portal(self, name: str) -> _Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise SqlError("34000", f'portal "{name}" does not exist')
        return portal

    def _describe(self, msg: Describe) -> None:
        try:
            if msg.kind == "S":
                prepared = self._statement(msg.name)
                self._send(ParameterDescription(prepared.param_types))
                fields = self._fields(prepared.plan, prepared.param_types)
            else:
                portal = self._portal(msg.name)
                p = portal.prepared
                fields = self._fields(p.plan, p.param_types, portal.result_formats)
        except SqlError as exc:
            self._error(exc, extended=True)
            return
        self._send(NoData() if fields is None else RowDescription(fields))

    def _execute_message(self, msg: Execute) -> None:
        try:
            portal = self._portal(msg.portal)
            plan = portal.prepared.plan
            if plan is None:
                self._send(EmptyQueryResponse())
                return
            if portal.result is None:
                self._check_owner(portal.tag, plan.text)
                result = self._run_plan(plan, portal.params, portal.prepared.param_types)
                if result.sleep:
                    self._start_sleep(
                        result.sleep, lambda err: self._executed(err, portal, result, msg)
                    )
                    return
                portal.result = result
        except SqlError as exc:
            self._error(exc, extended=True)
            return
        self._emit_portal(portal, msg.max_rows)

    def _executed(
        self, err: SqlError | None, portal: _Portal, result: _Result, msg: Execute
    ) -> None:
        if err is not None:
            self._error(err, extended=True)
            return
        portal.result = result
        self._emit_portal(portal, msg.max_rows)

    def _emit_portal(self, portal: _Portal, max_rows: int) -> None:
        result = portal.result
        assert result is not None
        self._notices(result)
        result.notices = []
        if result.fields is None:
            self._send(CommandComplete(result.tag))
            return
        fmts = portal.result_formats
        end = len(result.rows) if max_rows <= 0 else portal.pos + max_rows
        batch = result.rows[portal.pos : end]
        portal.pos += len(batch)
        for row in batch:
            values = [
                _encode(v, f.type_oid, _format_for(fmts, i))
                for i, (v, f) in enumerate(zip(row, result.fields, strict=True))
            ]
            self._send(DataRow(values))
        if portal.pos < len(result.rows):
            self._send(PortalSuspended())
        elif result.tag.startswith("SELECT"):
            self._send(CommandComplete(f"SELECT {len(batch)}"))
        else:
            self._send(CommandComplete(result.tag))
