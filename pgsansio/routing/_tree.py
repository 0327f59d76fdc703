"""Rules over libpg_query's parse tree (as loaded from ``parse_sql_json``).

The tree is plain dicts: a node is ``{"NodeType": {field: value, ...}}``, and fields
left at their default (false, 0, empty) are omitted. Anything not named below is a
write: unknown means primary.

Reads: SELECT / VALUES / TABLE without the write markers below, SHOW, EXPLAIN of a read,
COPY ... TO STDOUT of a table or a read query, DECLARE (without HOLD) of a read,
SAVEPOINT / RELEASE / ROLLBACK TO, COMMIT / ROLLBACK / END / ABORT, BEGIN READ ONLY.

Session state -- SET, RESET, DISCARD -- is not a write: the engine keeps a client's
settings and replays them on whichever server it gets, so they may run anywhere. SET
TRANSACTION READ ONLY / READ WRITE, and its GUC form ``SET transaction_read_only = on``,
report ``read_only``. The function form,
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


def _pg_bool(text: str) -> bool | None:
    """PostgreSQL's boolean input (parse_bool): on/off, true/false, yes/no, 1/0 and
    unambiguous prefixes, any case. None for anything else (the server will refuse it).
    """
    t = text.strip().lower()
    if not t:
        return None
    if "true".startswith(t) or "yes".startswith(t) or t == "1":
        return True
    if "false".startswith(t) or "no".startswith(t) or t == "0":
        return False
    if len(t) >= 2 and "on".startswith(t):
        return True
    if len(t) >= 2 and "off".startswith(t):
        return False
    return None


def _const_bool(const: Node) -> bool | None:
    if "ival" in const:
        return bool(const["ival"].get("ival", 0))
    if "sval" in const:
        return _pg_bool(const["sval"].get("sval", ""))
    return None


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
    return True  # INSERT, UPDATE, DELETE, MERGE, DDL, utility statements, unknown


def _read_only_option(options: list[Node] | None) -> bool | None:
    """READ ONLY -> True, READ WRITE -> False, neither -> None (last one wins)."""
    result = None
    for option in options or ():
        elem = option.get("DefElem")
        if elem is None or elem.get("defname") != "transaction_read_only":
            continue
        result = _const_bool(elem.get("arg", {}).get("A_Const", {}))
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
        if var is not None:
            name = var.get("name")
            mode = None
            if name == "TRANSACTION":
                mode = _read_only_option(var.get("args"))
            elif name == "transaction_read_only" and var.get("kind") == "VAR_SET_VALUE":
                # SET [LOCAL] transaction_read_only = on: the GUC form of the same thing
                args: list[Node] = var.get("args") or []
                if len(args) == 1:
                    mode = _const_bool(args[0].get("A_Const", {}))
            if mode is not None:
                read_only = mode
            continue  # session state: not a write
        if not write and _statement_writes(stmt):
            write = True
    return write, begin, read_only, ends
