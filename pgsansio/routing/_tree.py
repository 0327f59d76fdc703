"""Rules over libpg_query's parse tree (as loaded from ``parse_sql_json``).

The tree is plain dicts: a node is ``{"NodeType": {field: value, ...}}``, and fields
left at their default (false, 0, empty) are omitted. Anything not named below is a
write: unknown means primary.

Reads: SELECT / VALUES / TABLE without the write markers below, SHOW, EXPLAIN of a read,
COPY ... TO STDOUT of a table or a read query, DECLARE (without HOLD) of a read,
SAVEPOINT / RELEASE / ROLLBACK TO, COMMIT / ROLLBACK / END / ABORT, BEGIN READ ONLY.

Session state -- SET, RESET, DISCARD -- is not a write: the engine keeps a client's
settings and replays them on whichever server it gets, so they may run anywhere. SET
TRANSACTION READ ONLY / READ WRITE reports ``read_only``. The function form,
``set_config()``, is a write like every function not on the allow-list, because the
engine cannot follow it.

Writes: INSERT, UPDATE, DELETE, MERGE, all DDL, plain BEGIN / START TRANSACTION and
READ WRITE ones (what follows belongs to the primary), PREPARE TRANSACTION, COMMIT /
ROLLBACK PREPARED, LOCK, LISTEN / NOTIFY / UNLISTEN, COPY FROM, COPY to or from a server
file or program, CALL, DO, VACUUM, ANALYZE, CHECKPOINT, PREPARE / EXECUTE / DEALLOCATE
(a prepared statement lives on one server), DECLARE ... WITH HOLD and FETCH / MOVE /
CLOSE (a held cursor lives on one server), and a SELECT anywhere in which there is a
locking clause (FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE), an INTO, a
data-modifying statement (writable CTE), or a call of a function not in
``READ_SAFE_FUNCTIONS``. EXPLAIN, with or without ANALYZE, is classified as the
statement it explains (without ANALYZE nothing runs, but the primary answers it just as
well and we need not reason about what planning a write does on a standby).

Not seen: functions called through operators, casts, views, rules, triggers or column
defaults; a SELECT on a temporary table (which exists on one server only).
"""

from __future__ import annotations

from typing import Any

from ._functions import READ_SAFE_FUNCTIONS

Node = dict[str, Any]

# Keys whose mere presence under a SELECT makes it a write.
_WRITE_KEYS = frozenset(
    {"lockingClause", "intoClause", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
)
_CURSOR_OPT_HOLD = 0x0020  # parsenodes.h: DECLARE ... WITH HOLD
_FALSE_WORDS = frozenset({"false", "off", "no", "0"})


def _function_is_safe(call: Node) -> bool:
    names = call["funcname"]
    if len(names) == 1:
        return names[0]["String"]["sval"] in READ_SAFE_FUNCTIONS
    if len(names) == 2 and names[0]["String"]["sval"] == "pg_catalog":
        return names[1]["String"]["sval"] in READ_SAFE_FUNCTIONS
    return False


def query_writes(node: Any) -> bool:
    """Whether a (sub)tree contains a write marker: walks every nested dict and list."""
    stack = [node]
    pop = stack.pop
    push = stack.append
    while stack:
        n = pop()
        if type(n) is dict:
            for key, value in n.items():
                if key in _WRITE_KEYS:
                    return True
                if key == "FuncCall" and not _function_is_safe(value):
                    return True
                if type(value) is dict or type(value) is list:
                    push(value)
        else:
            for value in n:
                if type(value) is dict or type(value) is list:
                    push(value)
    return False


def _statement_writes(stmt: Node) -> bool:
    """Write-ness of a statement that does not touch transaction state."""
    ((kind, body),) = stmt.items()
    if kind == "SelectStmt":
        return query_writes(body)
    if kind in ("VariableSetStmt", "VariableShowStmt", "DiscardStmt"):
        return False
    if kind == "ExplainStmt":
        return _statement_writes(body["query"])
    if kind == "CopyStmt":
        if body.get("is_from") or "filename" in body or body.get("is_program"):
            return True
        query = body.get("query")
        return query is not None and _statement_writes(query)
    if kind == "DeclareCursorStmt":
        return bool(body.get("options", 0) & _CURSOR_OPT_HOLD) or _statement_writes(body["query"])
    if kind == "TransactionStmt":
        # Inside EXPLAIN or a cursor it cannot appear; as a statement it is handled by
        # classify_statements. Reaching here means an unexpected shape.
        return True
    return True  # INSERT, UPDATE, DELETE, MERGE, DDL, utility statements, unknown


def _read_only_option(options: list[Node] | None) -> bool | None:
    """READ ONLY -> True, READ WRITE -> False, neither -> None (last one wins)."""
    result = None
    for option in options or ():
        elem = option.get("DefElem")
        if elem is None or elem.get("defname") != "transaction_read_only":
            continue
        const = elem.get("arg", {}).get("A_Const", {})
        if "ival" in const:
            result = bool(const["ival"].get("ival", 0))
        elif "boolval" in const:
            result = bool(const["boolval"].get("boolval", False))
        elif "sval" in const:
            result = const["sval"].get("sval", "").lower() not in _FALSE_WORDS
    return result


def classify_statements(stmts: list[Node]) -> tuple[bool, bool, bool | None, bool]:
    """(write, begin, read_only, ends) for the statements of one text, in order.

    ``write``, ``begin`` and ``ends`` are true if any statement says so. ``read_only``
    follows the statements in order: each BEGIN / START TRANSACTION sets it (to None
    when it gives no access mode) and SET TRANSACTION with an access mode overrides it.
    """
    write = begin = ends = False
    read_only: bool | None = None
    for raw in stmts:
        stmt = raw["stmt"]
        txn = stmt.get("TransactionStmt")
        if txn is not None:
            kind = txn["kind"]
            if kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
                begin = True
                read_only = _read_only_option(txn.get("options"))
                if read_only is not True:
                    write = True
            elif kind in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"):
                ends = True
                if txn.get("chain"):
                    begin = True  # AND CHAIN opens a new transaction like the old one
            elif kind in (
                "TRANS_STMT_PREPARE",
                "TRANS_STMT_COMMIT_PREPARED",
                "TRANS_STMT_ROLLBACK_PREPARED",
            ):
                ends = True
                write = True  # two-phase commit exists on the primary only
            elif kind not in (
                "TRANS_STMT_SAVEPOINT",
                "TRANS_STMT_RELEASE",
                "TRANS_STMT_ROLLBACK_TO",
            ):
                write = True
            continue
        var = stmt.get("VariableSetStmt")
        if var is not None and var.get("name") == "TRANSACTION":
            mode = _read_only_option(var.get("args"))
            if mode is not None:
                read_only = mode
            continue
        if not write and _statement_writes(stmt):
            write = True
    return write, begin, read_only, ends
