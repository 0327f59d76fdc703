"""Where a statement names its sharding key: PgCat's ``automatic_sharding_key``.

For a key ``table.column`` (or ``*.column``: that column in any table), a query text
is read with libpg_query's tree and what it compares the column to is returned: the
literal values and the ``$n`` parameter numbers (:class:`ShardKeys`). Which shard
that is (hashing, Bind parameters, what to do when keys disagree) is the engine's
decision; this module only reads SQL. Each statement of the text is read on its own
and their keys are put together; the text is routable by them only if all of them
land on one shard.

Recognised, in each statement (SELECT, UPDATE, DELETE, INSERT, and EXPLAIN of one):

- ``column = v`` or ``v = column``, where ``v`` is an integer or string literal or a
  parameter ``$n``, bare or cast to an integer type (``5::bigint``, ``$1::int8``),
  to ``text``, ``varchar`` (no length) or ``uuid`` (``'a0ee...'::uuid``);
  ``column IN (v1, v2, ...)`` (every item such a value).
- In the WHERE clause and in the ON condition of an INNER JOIN (``JOIN ... ON``),
  which are ANDed: under AND, the conditions that name the key are kept and the
  others ignored (each restricts the rows); under OR, every branch must name the key
  (else the OR does not restrict the rows, and gives no key). NOT, comparisons other
  than ``=``, ``NOT IN``, subqueries and expressions (``column = 2 + 3``,
  ``column = other_column``) give no key.
- The column qualified by the table's name (``data.id``; ``public.data.id``), by its
  alias (``FROM data d ... d.id``), or unqualified when the statement reads exactly
  one table and it is the key's table. With ``*.column`` any qualifier is accepted,
  and an unqualified column whatever the tables. The table's schema is not compared
  (as PgCat).
- ``INSERT INTO table (..., column, ...) VALUES (...), ...``: the column list must
  name the key; each row's value at that place must be a literal or parameter, else
  the statement gives no key (a row whose shard is unknown). ``INSERT ... SELECT``,
  an INSERT without a column list and ``DEFAULT`` give no key.
- UPDATE and DELETE: the WHERE clause, with the tables of FROM / USING counted.

A statement gives no key when it is a set operation (UNION, INTERSECT, EXCEPT), a
bare VALUES, has a data-modifying WITH query (which might write elsewhere), or is any
other kind of statement. Names are compared as PostgreSQL resolves them: an unquoted
name in SQL is folded to lower case, so a key written in lower case matches ``ID``,
``id`` and ``"id"``; a key with capitals matches only that quoted name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from pglast.parser import parse_sql_json

from ._router import cache_info, cache_limit

__all__ = ["NO_KEYS", "KeyFinder", "ShardKeys", "find_keys"]

Node = dict[str, Any]
Value = str | int  # a literal's text, or a parameter's number

# Types a value may be cast to and still be the key (pg_catalog names, and the names
# one may write with no schema): integers, text and uuid (sharding_key_type; whether
# the value is one is the engine's to say).
_KEY_TYPES = frozenset(
    {"int2", "int4", "int8", "smallint", "integer", "bigint", "int"} | {"text", "varchar", "uuid"}
)


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The values a statement text compares its sharding key to.

    ``values``: literals, as written (an integer's digits, a string constant's text);
    ``params``: parameter numbers (1 for ``$1``). Both in order of appearance, without
    repeats. Empty (false) when the text names no key.
    """

    values: tuple[str, ...] = ()
    params: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values or self.params)


NO_KEYS = ShardKeys()


class _Scope:
    """The tables a statement reads: how many, and the names by which a column of the
    key's table may be qualified."""

    __slots__ = ("count", "names", "single")

    def __init__(self) -> None:
        self.count = 0
        self.names: set[str] = set()  # visible names of the key's table's entries
        self.single = False  # exactly one table, and it is the key's table

    def add(self, relname: str | None, visible: str | None, table: str) -> None:
        self.count += 1
        ours = relname is not None and table in ("*", relname)
        if ours and visible is not None:
            self.names.add(visible)
        self.single = self.count == 1 and ours


def _sval(node: Node) -> str | None:
    s = node.get("String")
    return s.get("sval") if s is not None else None


def _range_var(rv: Node, table: str, scope: _Scope) -> None:
    relname = rv.get("relname")
    alias = rv.get("alias")
    visible = alias.get("aliasname") if alias is not None else relname
    scope.add(relname, visible, table)


def _from(items: list[Node], table: str, scope: _Scope, quals: list[Node]) -> None:
    """Count each FROM item; collect the ON conditions of inner joins into ``quals``."""
    for item in items:
        if "RangeVar" in item:
            _range_var(item["RangeVar"], table, scope)
        elif "JoinExpr" in item:
            j = item["JoinExpr"]
            if "alias" in j:  # (a JOIN b ON ...) AS j: the inner names are hidden
                scope.add(None, None, table)
                continue
            _from([j["larg"], j["rarg"]], table, scope, quals)
            if j.get("jointype", "JOIN_INNER") == "JOIN_INNER" and "quals" in j:
                quals.append(j["quals"])
        else:  # a subquery, a function, VALUES...: a table that is not the key's
            scope.add(None, None, table)


def _value(node: Node | None) -> Value | None:
    """A literal's text or a parameter's number; None for anything else."""
    if node is None:
        return None
    cast = node.get("TypeCast")
    if cast is not None:
        type_name = cast.get("typeName", {})
        names = type_name.get("names", ())
        if not names or _sval(names[-1]) not in _KEY_TYPES or "typmods" in type_name:
            return None  # (a length, as in varchar(3), may cut the value)
        node = cast.get("arg")
        if node is None:
            return None
    const = node.get("A_Const")
    if const is not None:
        if "ival" in const:
            return str(const["ival"].get("ival", 0))  # 0 is left out of the tree
        if "fval" in const:  # an integer beyond int4, or a decimal
            return str(const["fval"].get("fval", ""))
        if "sval" in const:
            return str(const["sval"].get("sval", ""))
        return None  # NULL, a boolean, a bit string
    param = node.get("ParamRef")
    if param is not None:
        number = param.get("number", 0)
        return number if isinstance(number, int) and number > 0 else None
    return None


class _Reader:
    """Reads the conditions of one statement for ``table.column``."""

    __slots__ = ("column", "scope", "table")

    def __init__(self, table: str, column: str, scope: _Scope) -> None:
        self.table = table
        self.column = column
        self.scope = scope

    def _is_key(self, node: Node | None) -> bool:
        if node is None:
            return False
        ref = node.get("ColumnRef")
        if ref is None:
            return False
        fields = ref.get("fields", ())
        if not 1 <= len(fields) <= 3 or _sval(fields[-1]) != self.column:
            return False
        if len(fields) == 1:
            return self.table == "*" or self.scope.single
        return self.table == "*" or _sval(fields[-2]) in self.scope.names

    def keys(self, expr: Node) -> list[Value] | None:
        """The values ``expr`` restricts the key to (all of them must hold for some
        row), or None when it does not restrict the key."""
        boolean = expr.get("BoolExpr")
        if boolean is not None:
            op = boolean.get("boolop")
            args = boolean.get("args", ())
            if op == "AND_EXPR":
                return self.conjunction(args)
            if op == "OR_EXPR":
                found: list[Value] = []
                for arg in args:
                    k = self.keys(arg)
                    if k is None:
                        return None  # a branch that does not restrict the key
                    found += k
                return found or None
            return None  # NOT
        a = expr.get("A_Expr")
        if a is None:
            return None
        name = a.get("name", ())
        if len(name) != 1 or _sval(name[0]) != "=":
            return None
        kind = a.get("kind", "AEXPR_OP")
        left = a.get("lexpr")
        right = a.get("rexpr")
        if kind == "AEXPR_OP":
            if self._is_key(left):
                v = _value(right)
            elif self._is_key(right):
                v = _value(left)
            else:
                return None
            return None if v is None else [v]
        if kind == "AEXPR_IN" and self._is_key(left) and right is not None and "List" in right:
            values: list[Value] = []
            for item in right["List"].get("items", ()):
                v = _value(item)
                if v is None:
                    return None
                values.append(v)
            return values or None
        return None

    def conjunction(self, exprs: Any) -> list[Value] | None:
        found: list[Value] | None = None
        for expr in exprs:
            k = self.keys(expr)
            if k is not None:
                found = k if found is None else found + k
        return found


def _writes_in_with(body: Node) -> bool:
    with_clause = body.get("withClause")
    if with_clause is None:
        return False
    for cte in with_clause.get("ctes", ()):
        query = cte.get("CommonTableExpr", {}).get("ctequery", {})
        if "SelectStmt" not in query:
            return True
    return False


def _insert_keys(body: Node, table: str, column: str) -> list[Value] | None:
    relation = body.get("relation", {})
    if table not in ("*", relation.get("relname")) or _writes_in_with(body):
        return None
    cols = [c.get("ResTarget", {}).get("name") for c in body.get("cols", ())]
    if column not in cols:
        return None
    index = cols.index(column)
    select = body.get("selectStmt", {}).get("SelectStmt")
    if select is None or "valuesLists" not in select or _writes_in_with(select):
        return None
    found: list[Value] = []
    for row in select["valuesLists"]:
        items = row.get("List", {}).get("items", ())
        v = _value(items[index]) if index < len(items) else None
        if v is None:
            return None  # a row whose key is not a constant: its shard is unknown
        found.append(v)
    return found or None


def _statement_keys(stmt: Node, table: str, column: str) -> list[Value] | None:
    if len(stmt) != 1:
        return None
    ((kind, body),) = stmt.items()
    if kind == "InsertStmt":
        return _insert_keys(body, table, column)
    if kind == "ExplainStmt":
        query = body.get("query")
        return None if query is None else _statement_keys(query, table, column)
    scope = _Scope()
    quals: list[Node] = []
    if kind == "SelectStmt":
        if body.get("op", "SETOP_NONE") != "SETOP_NONE" or "valuesLists" in body:
            return None
        _from(body.get("fromClause", []), table, scope, quals)
    elif kind == "UpdateStmt":
        _range_var(body.get("relation", {}), table, scope)
        _from(body.get("fromClause", []), table, scope, quals)
    elif kind == "DeleteStmt":
        _range_var(body.get("relation", {}), table, scope)
        _from(body.get("usingClause", []), table, scope, quals)
    else:
        return None
    if _writes_in_with(body):
        return None
    where = body.get("whereClause")
    if where is not None:
        quals.append(where)
    return _Reader(table, column, scope).conjunction(quals)


def find_keys(sql: str, table: str, column: str) -> ShardKeys:
    """The values the statements of ``sql`` compare ``table.column`` to (``table``
    may be ``*``); :data:`NO_KEYS` when there are none or the text is not valid SQL.
    Uncached; never raises."""
    low = sql.lower()
    if "u&" not in low and (
        column.lower() not in low or (table != "*" and table.lower() not in low)
    ):
        return NO_KEYS  # the names are not in the text: no need to parse it
    if "\x00" in sql:
        return NO_KEYS
    try:
        tree: Node = json.loads(parse_sql_json(sql))
        found: list[Value] = []
        for raw in tree.get("stmts", ()):
            stmt = raw.get("stmt")
            k = _statement_keys(stmt, table, column) if stmt is not None else None
            if k is not None:
                found += k
    except Exception:
        return NO_KEYS  # not SQL (the server will say so), or a tree we do not know
    if not found:
        return NO_KEYS
    unique = dict.fromkeys(found)
    return ShardKeys(
        tuple(v for v in unique if isinstance(v, str)),
        tuple(v for v in unique if isinstance(v, int)),
    )


class KeyFinder:
    """:func:`find_keys` for one ``automatic_sharding_key``, with a bounded LRU cache
    by query text (like :class:`~pgsansio.routing.Router`).

    Args:
        key: ``table.column`` or ``*.column`` (one dot; quotes already removed).
        max_length: a text longer than this many characters is not parsed and names
            no key (``query_parser_max_length``); 0 means no limit.
        cache_size: how many distinct texts to remember; 0 disables the cache.
    """

    __slots__ = ("_cache_limit", "_cached", "_max_length", "column", "table")

    def __init__(self, key: str, max_length: int = 0, cache_size: int = 10_000) -> None:
        table, dot, column = key.partition(".")
        if not dot or not table or not column or "." in column:
            raise ValueError(f"a sharding key is table.column, with one dot, not {key!r}")
        self._cache_limit = cache_limit(max_length, cache_size)
        self._max_length = max_length
        self.table = table
        self.column = column
        find = partial(find_keys, table=table, column=column)
        self._cached: Callable[[str], ShardKeys] = lru_cache(maxsize=cache_size)(find)

    def find(self, sql: str) -> ShardKeys:
        """The sharding key values in ``sql`` (a Query or Parse text). Never raises."""
        if len(sql) <= self._cache_limit:
            return self._cached(sql)
        if self._max_length and len(sql) > self._max_length:
            return NO_KEYS
        return find_keys(sql, self.table, self.column)

    def cache_info(self) -> tuple[int, int, int | None, int]:
        """(hits, misses, maxsize, currsize) of the cache, for stats and tests."""
        return cache_info(self._cached)
