"""The tiny SQL dialect that :mod:`pgsansio.testing.fakepg` understands.

The fake server exists to test a pooler, not to run SQL, so the dialect is what a
pooler's tests need and nothing more. It is still parsed with a real lexer (quotes,
quoted identifiers, ``--`` and nested ``/* */`` comments, ``$n`` parameters,
``::`` casts) because a pooler rewrites and splits query text, and a fake that only
did ``str.split(";")`` would hide the bugs we are looking for.

Statements (keywords are case-insensitive; ``expr`` is an integer, a string
literal, ``$n``, ``NULL``, ``true``/``false``, ``CASE WHEN expr THEN expr ELSE expr
END``, ``pg_backend_pid()``,
``pg_sleep(seconds)``, ``current_setting('name')``, ``pg_cancel_backend(expr)``,
``pg_terminate_backend(expr)``, each with an optional ``::type`` and ``AS alias``)::

    BEGIN | START TRANSACTION | COMMIT | END | ROLLBACK | ABORT   [WORK|TRANSACTION ...]
    SELECT expr [, expr ...]
    SELECT generate_series(a, b)
    SELECT count(*) FROM t | SELECT * FROM t
    SELECT error                                -- 42601, for error-path tests
    INSERT INTO t VALUES (expr, ...) [, (...)]  -- tables spring into existence
    DELETE FROM t
    SET [SESSION|LOCAL] name {=|TO} value [, value] | SET TIME ZONE value
    RESET name | RESET ALL | SHOW name
    DISCARD ALL | DISCARD PLANS | DEALLOCATE [PREPARE] name | DEALLOCATE ALL

Anything else is a syntax error (42601), so a pooler that sends something we did
not expect shows up as a visible error instead of silently "working".

Comments of the form ``/* tag:XYZ */`` are collected as the statement's *tags*: the
simulation labels every statement with the client that sent it, and the fake server
checks that one server transaction never mixes two clients' statements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BOOL",
    "INT4",
    "INT8",
    "TEXT",
    "VOID",
    "Expr",
    "Plan",
    "SqlError",
    "Statement",
    "Token",
    "parse",
    "split",
]

# Type OIDs from pg_type.dat.
BOOL = 16
INT8 = 20
INT4 = 23
TEXT = 25
VOID = 2278
_TYPES = {
    "int": INT4,
    "int4": INT4,
    "integer": INT4,
    "int8": INT8,
    "bigint": INT8,
    "text": TEXT,
    "varchar": TEXT,
    "bool": BOOL,
    "boolean": BOOL,
}


class SqlError(Exception):
    """A statement failed; the server answers ErrorResponse with these fields."""

    def __init__(self, sqlstate: str, message: str, severity: str = "ERROR") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical token.

    ``kind`` is ``ident`` (text lower-cased, as PostgreSQL folds unquoted names),
    ``qident`` (a quoted identifier, case kept), ``string``, ``number``, ``param``
    (text is the number after ``$``) or ``op``.
    """

    kind: str
    text: str


@dataclass(slots=True)
class Statement:
    """One statement of a query string: its tokens, source text and tags."""

    tokens: list[Token]
    text: str
    tags: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str | None:
        return self.tags[0] if self.tags else None


def _lex_comment(sql: str, i: int, tags: list[str]) -> int:
    # PostgreSQL's block comments nest; a tag comment is one without nesting.
    depth, j, start = 1, i + 2, i + 2
    while depth:
        if j >= len(sql):
            raise SqlError("42601", "unterminated /* comment")
        if sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
        else:
            j += 1
    body = sql[start : j - 2].strip()
    if body.startswith("tag:"):
        tags.append(body[4:].strip())
    return j


def _lex_quoted(sql: str, i: int, quote: str) -> tuple[str, int]:
    out: list[str] = []
    j = i + 1
    while True:
        k = sql.find(quote, j)
        if k < 0:
            what = "quoted string" if quote == "'" else "quoted identifier"
            raise SqlError("42601", f"unterminated {what} at or near {sql[i : i + 20]!r}")
        out.append(sql[j:k])
        if sql.startswith(quote, k + 1):  # a doubled quote stands for itself
            out.append(quote)
            j = k + 2
            continue
        return "".join(out), k + 1


def split(sql: str) -> list[Statement]:
    """Lex a query string and cut it into statements at top-level semicolons.

    Empty statements (``;;``) are dropped, as PostgreSQL does; a query of only
    whitespace, comments and semicolons gives an empty list.

    Raises:
        SqlError: an unterminated quote or comment (42601).
    """
    statements: list[Statement] = []
    tokens: list[Token] = []
    tags: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _lex_comment(sql, i, tags)
        elif ch == "'":
            text, i = _lex_quoted(sql, i, "'")
            tokens.append(Token("string", text))
        elif ch == '"':
            text, i = _lex_quoted(sql, i, '"')
            tokens.append(Token("qident", text))
        elif ch == "$" and i + 1 < n and sql[i + 1].isdigit():
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            tokens.append(Token("param", sql[i + 1 : j]))
            i = j
        elif ch.isdigit() or (ch == "." and i + 1 < n and sql[i + 1].isdigit()):
            j = i
            while j < n and (sql[j].isdigit() or sql[j] == "."):
                j += 1
            tokens.append(Token("number", sql[i:j]))
            i = j
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            tokens.append(Token("ident", sql[i:j].lower()))
            i = j
        elif ch == ";":
            if tokens:
                statements.append(Statement(tokens, sql[start:i].strip(), tags))
            tokens, tags = [], []
            i += 1
            start = i
        elif sql.startswith("::", i):
            tokens.append(Token("op", "::"))
            i += 2
        else:
            tokens.append(Token("op", ch))
            i += 1
    if tokens:
        statements.append(Statement(tokens, sql[start:].strip(), tags))
    elif tags and statements:
        statements[-1].tags.extend(tags)
    return statements


@dataclass(frozen=True, slots=True)
class Expr:
    """A select-list or VALUES item.

    ``kind`` is ``const`` (``value`` holds the text, None for NULL), ``param``
    (``value`` holds the number), ``func`` (``value`` the name, ``args`` the
    arguments), ``star`` or ``count``.
    """

    kind: str
    value: str | None = None
    args: tuple[Expr, ...] = ()
    type_oid: int = TEXT
    cast: int | None = None
    name: str = "?column?"


@dataclass(frozen=True, slots=True)
class Plan:
    """A parsed statement, ready to describe (columns) and execute.

    ``kind`` is one of ``begin commit rollback select series select_table count
    insert delete set reset show discard deallocate``; ``args`` holds the
    kind's operands as strings, ``exprs`` its expressions, ``rows`` the VALUES
    lists of an INSERT.
    """

    kind: str
    args: tuple[str | None, ...] = ()
    exprs: tuple[Expr, ...] = ()
    rows: tuple[tuple[Expr, ...], ...] = ()
    text: str = ""
    tags: tuple[str, ...] = ()

    @property
    def tag(self) -> str | None:
        return self.tags[0] if self.tags else None

    @property
    def is_transaction_exit(self) -> bool:
        """COMMIT or ROLLBACK: the only statements an aborted transaction runs."""
        return self.kind in ("commit", "rollback")

    @property
    def params(self) -> int:
        """The highest ``$n`` the statement uses."""
        found = [e for e in self.exprs] + [e for row in self.rows for e in row]
        highest = 0
        while found:
            e = found.pop()
            if e.kind == "param" and e.value is not None:
                highest = max(highest, int(e.value))
            found.extend(e.args)
        return highest


class _Parser:
    def __init__(self, stmt: Statement) -> None:
        self.tokens = stmt.tokens
        self.pos = 0
        self.stmt = stmt

    def peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def error(self) -> SqlError:
        tok = self.peek()
        if tok is None:
            return SqlError("42601", "syntax error at end of input")
        return SqlError("42601", f'syntax error at or near "{tok.text}"')

    def next(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self.error()
        self.pos += 1
        return tok

    def accept(self, *words: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind in ("ident", "op") and tok.text in words:
            self.pos += 1
            return tok.text
        return None

    def expect(self, *words: str) -> str:
        got = self.accept(*words)
        if got is None:
            raise self.error()
        return got

    def name(self) -> str:
        tok = self.next()
        if tok.kind not in ("ident", "qident"):
            self.pos -= 1
            raise self.error()
        # Dotted names (custom GUCs such as ``myapp.flag``).
        text = tok.text
        while self.accept("."):
            part = self.next()
            text += "." + part.text
        return text

    def end(self) -> None:
        if self.peek() is not None:
            raise self.error()

    def plan(
        self,
        kind: str,
        *args: str | None,
        exprs: tuple[Expr, ...] = (),
        rows: tuple[tuple[Expr, ...], ...] = (),
    ) -> Plan:
        self.end()
        return Plan(kind, args, exprs, rows, self.stmt.text, tuple(self.stmt.tags))

    # --- expressions ------------------------------------------------------------

    def expr(self) -> Expr:
        tok = self.next()
        if tok.kind == "number":
            e = Expr("const", tok.text, type_oid=INT4 if tok.text.isdigit() else TEXT)
        elif tok.kind == "op" and tok.text == "-" and (n := self.peek()) and n.kind == "number":
            self.pos += 1
            e = Expr("const", "-" + n.text, type_oid=INT4 if n.text.isdigit() else TEXT)
        elif tok.kind == "string":
            e = Expr("const", tok.text)
        elif tok.kind == "param":
            e = Expr("param", tok.text)
        elif tok.kind == "ident" and tok.text == "null":
            e = Expr("const", None)
        elif tok.kind == "ident" and tok.text in ("true", "false"):
            e = Expr("const", tok.text[0], type_oid=BOOL, name="bool")
        elif tok.kind == "ident" and tok.text == "case":
            e = self.case()
        elif tok.kind == "ident" and self.accept("("):
            e = self.call(tok.text)
        else:
            self.pos -= 1
            raise self.error()
        while self.accept("::"):
            type_name = self.name()
            oid = _TYPES.get(type_name)
            if oid is None:
                raise SqlError("42704", f'type "{type_name}" does not exist')
            e = Expr(e.kind, e.value, e.args, type_oid=oid, cast=oid, name=e.name)
        if self.accept("as"):
            alias = self.name()
            e = Expr(e.kind, e.value, e.args, e.type_oid, e.cast, alias)
        return e

    def case(self) -> Expr:
        """``CASE WHEN cond THEN a ELSE b END`` (one WHEN; what read-your-writes'
        WAL-position query needs). Only the branch taken is evaluated."""
        self.expect("when")
        cond = self.expr()
        self.expect("then")
        then = self.expr()
        self.expect("else")
        other = self.expr()
        self.expect("end")
        untyped = then.kind == "const" and then.value is None  # THEN NULL: ELSE's type
        oid = other.type_oid if untyped else then.type_oid
        return Expr("case", args=(cond, then, other), type_oid=oid, name="case")

    def call(self, func: str) -> Expr:
        args: list[Expr] = []
        if func == "count" and self.accept("*"):
            self.expect(")")
            return Expr("count", type_oid=INT8, name="count")
        if not self.accept(")"):
            args.append(self.expr())
            while self.accept(","):
                args.append(self.expr())
            self.expect(")")
        arity = {
            "pg_backend_pid": (0, INT4),
            "pg_sleep": (1, VOID),
            "current_setting": (1, TEXT),
            "pg_cancel_backend": (1, BOOL),
            "pg_terminate_backend": (1, BOOL),
            "generate_series": (2, INT4),
            "pg_is_in_recovery": (0, BOOL),
            "pg_current_wal_lsn": (0, TEXT),
            "pg_current_wal_insert_lsn": (0, TEXT),
            "pg_last_wal_replay_lsn": (0, TEXT),
        }
        if func not in arity:
            raise SqlError("42883", f"function {func}() does not exist")
        count, oid = arity[func]
        if len(args) != count:
            raise SqlError("42883", f"function {func} with {len(args)} arguments does not exist")
        return Expr("func", func, tuple(args), type_oid=oid, name=func)

    # --- statements ----------------------------------------------------------------

    def statement(self) -> Plan:
        word = self.next()
        if word.kind != "ident":
            self.pos -= 1
            raise self.error()
        handler = getattr(self, "st_" + word.text, None)
        if handler is None:
            self.pos -= 1
            raise self.error()
        plan: Plan = handler()
        return plan

    def _transaction_noise(self) -> None:
        # BEGIN [WORK] ISOLATION LEVEL ... / READ ONLY ...: accepted and ignored.
        self.pos = len(self.tokens)

    def st_begin(self) -> Plan:
        self._transaction_noise()
        return self.plan("begin")

    def st_start(self) -> Plan:
        self.expect("transaction")
        self._transaction_noise()
        return self.plan("begin")

    def st_commit(self) -> Plan:
        self.accept("work", "transaction")
        return self.plan("commit")

    st_end = st_commit

    def st_rollback(self) -> Plan:
        self.accept("work", "transaction")
        return self.plan("rollback")

    st_abort = st_rollback

    def st_select(self) -> Plan:
        if self.accept("error"):
            raise SqlError("42601", 'syntax error at or near "error"')
        if self.accept("*"):
            self.expect("from")
            return self.plan("select_table", self.name())
        items = [self.expr()]
        while self.accept(","):
            items.append(self.expr())
        if self.accept("from"):
            table = self.name()
            if len(items) != 1 or items[0].kind != "count":
                raise SqlError("0A000", "only count(*) and * can be selected from a table")
            return self.plan("count", table, exprs=tuple(items))
        if any(e.kind == "count" for e in items):
            raise SqlError("42601", "count(*) needs a FROM clause")
        series = [e for e in items if e.kind == "func" and e.value == "generate_series"]
        if series:
            if len(items) != 1:
                raise SqlError("0A000", "generate_series() must be the only select item")
            return self.plan("series", exprs=tuple(items))
        return self.plan("select", exprs=tuple(items))

    def st_insert(self) -> Plan:
        self.expect("into")
        table = self.name()
        self.expect("values")
        rows = [self._values_row()]
        while self.accept(","):
            rows.append(self._values_row())
        return self.plan("insert", table, rows=tuple(rows))

    def _values_row(self) -> tuple[Expr, ...]:
        self.expect("(")
        row = [self.expr()]
        while self.accept(","):
            row.append(self.expr())
        self.expect(")")
        return tuple(row)

    def st_delete(self) -> Plan:
        self.expect("from")
        return self.plan("delete", self.name())

    def st_set(self) -> Plan:
        scope = self.accept("session", "local") or "session"
        if self.accept("time"):
            self.expect("zone")
            name = "timezone"
        else:
            name = self.name()
            self.expect("=", "to")
        values: list[str | None] = [self._set_value()]
        while self.accept(","):
            values.append(self._set_value())
        if None in values:
            if len(values) > 1:
                raise self.error()
            return self.plan("set", name, None, scope)
        return self.plan("set", name, ", ".join(v for v in values if v is not None), scope)

    def _set_value(self) -> str | None:
        tok = self.next()
        if tok.kind == "ident" and tok.text in ("default", "local"):
            return None
        if tok.kind == "op" and tok.text == "-":
            return "-" + self.next().text
        if tok.kind in ("string", "number", "ident", "qident"):
            return tok.text
        self.pos -= 1
        raise self.error()

    def st_reset(self) -> Plan:
        if self.accept("all"):
            return self.plan("reset", None)
        if self.accept("time"):
            self.expect("zone")
            return self.plan("reset", "timezone")
        return self.plan("reset", self.name())

    def st_show(self) -> Plan:
        if self.accept("time"):
            self.expect("zone")
            return self.plan("show", "timezone")
        return self.plan("show", self.name())

    def st_discard(self) -> Plan:
        what = self.expect("all", "plans", "sequences", "temp", "temporary")
        return self.plan("discard", what)

    def st_deallocate(self) -> Plan:
        self.accept("prepare")
        if self.accept("all"):
            return self.plan("deallocate", None)
        return self.plan("deallocate", self.name())


def parse(stmt: Statement) -> Plan:
    """Turn one statement into a :class:`Plan`.

    Raises:
        SqlError: a syntax error (42601) or an unknown function or type.
    """
    return _Parser(stmt).statement()


# --- configuration parameters (GUCs) ------------------------------------------------

#: Defaults of the parameters the fake server knows, by canonical name. The
#: ``GUC_REPORT`` ones (:data:`REPORTED`) are what PostgreSQL 16 sends as
#: ParameterStatus; poolers track them, so their values must behave exactly.
GUC_DEFAULTS: dict[str, str] = {
    "application_name": "",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "default_transaction_read_only": "off",
    "in_hot_standby": "off",
    "integer_datetimes": "on",
    "IntervalStyle": "postgres",
    "is_superuser": "off",
    "server_encoding": "UTF8",
    "server_version": "16.4",
    "session_authorization": "",
    "standard_conforming_strings": "on",
    "TimeZone": "UTC",
    # not reported
    "extra_float_digits": "1",
    "idle_in_transaction_session_timeout": "0",
    "lock_timeout": "0",
    "max_connections": "100",
    "search_path": '"$user", public',
    "statement_timeout": "0",
    "work_mem": "4MB",
}
REPORTED: tuple[str, ...] = tuple(list(GUC_DEFAULTS)[:13])
READ_ONLY = frozenset(
    {"in_hot_standby", "integer_datetimes", "max_connections", "server_encoding"}
    | {"server_version", "is_superuser", "session_authorization"}
)
_CANONICAL = {name.lower(): name for name in GUC_DEFAULTS}
_ENCODINGS = {"UTF8", "LATIN1", "LATIN9", "SQLASCII", "WIN1252", "EUCJP", "SJIS"}
_BOOLS = {"on": "on", "true": "on", "yes": "on", "1": "on", "off": "off", "false": "off"}
_BOOLS |= {"no": "off", "0": "off"}
_DATE_STYLES = {"iso": "ISO", "sql": "SQL", "postgres": "Postgres", "german": "German"}
_DATE_ORDERS = {"mdy": "MDY", "us": "MDY", "noneuropean": "MDY", "dmy": "DMY"}
_DATE_ORDERS |= {"euro": "DMY", "european": "DMY", "ymd": "YMD"}


def canonical_guc(name: str) -> str | None:
    """The canonical spelling of a parameter name, or None if unknown.

    Names are case-insensitive (``datestyle`` is ``DateStyle``); names with a
    dot are custom placeholders, which PostgreSQL accepts without a definition.
    """
    if "." in name:
        return name.lower()
    return _CANONICAL.get(name.lower())


def normalize_guc(name: str, value: str, current: str) -> str:
    """Check and canonicalize a value as PostgreSQL would before storing it.

    Only what a pooler can observe is modelled: encodings are spelled
    ``UTF8``, booleans ``on``/``off``, DateStyle ``ISO, MDY`` (a partial value
    keeps the other half of ``current``); other values are kept as given.

    Raises:
        SqlError: 22023 for a value the parameter does not take.
    """
    bad = SqlError("22023", f'invalid value for parameter "{name}": "{value}"')
    if name == "client_encoding":
        enc = value.upper().replace("-", "").replace("_", "")
        if enc not in _ENCODINGS:
            raise bad
        return "SQL_ASCII" if enc == "SQLASCII" else enc
    if name in ("standard_conforming_strings", "default_transaction_read_only"):
        if value.lower() not in _BOOLS:
            raise bad
        return _BOOLS[value.lower()]
    if name == "DateStyle":
        style, order = (part.strip() for part in current.split(","))
        for part in value.split(","):
            word = part.strip().lower()
            if word in _DATE_STYLES:
                style = _DATE_STYLES[word]
            elif word in _DATE_ORDERS:
                order = _DATE_ORDERS[word]
            else:
                raise bad
        return f"{style}, {order}"
    if name == "IntervalStyle":
        if value.lower() not in ("postgres", "postgres_verbose", "sql_standard", "iso_8601"):
            raise bad
        return value.lower()
    if name.endswith("_timeout"):
        timeout_ms(value, name)
    return value


def timeout_ms(value: str, name: str = "statement_timeout") -> int:
    """A time parameter in milliseconds: ``500``, ``500ms``, ``5s``, ``1min``.

    Raises:
        SqlError: 22023 when it is not such a value.
    """
    units = {"ms": 1, "s": 1000, "min": 60000, "h": 3600000, "": 1}
    text = value.strip().lower()
    digits = len(text) - len(text.lstrip("0123456789"))
    number, unit = text[:digits], text[digits:].strip()
    if not number or unit not in units:
        raise SqlError("22023", f'invalid value for parameter "{name}": "{value}"')
    return int(number) * units[unit]
