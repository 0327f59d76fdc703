"""Which reads with no sharding key can run on every shard and be merged, and how.

For a pool with ``cross_shard = "fan_out"``, a query that names no shard is read here
(pglast's tree, cached by text) and gets one of three answers:

- ``None``: not a cross-shard read; the pooler routes it as before (``default_shard``):
  a statement that reads no table (``SELECT 1``, ``SELECT now()``), ``SET``, ``BEGIN``,
  ``SHOW``, DDL, ``EXPLAIN``...
- :class:`Unmergeable`: a statement that must not run on one shard only and cannot be
  merged exactly: a write with no key (INSERT, UPDATE, DELETE, MERGE, COPY FROM,
  SELECT INTO, a data-modifying WITH), and the SELECT shapes below. The pooler answers
  with this error (SQLSTATE 0A000) and runs nothing.
- :class:`FanOutPlan`: the text each shard runs and how the pooler merges the answers.

Merged (one SELECT reading at least one table):

- the rows as they are (concatenation, in no particular order, as SQL allows);
- ``ORDER BY`` result columns (by position, by output name, or the same expression as
  a result column; ASC/DESC, NULLS FIRST/LAST): each shard sorts, the pooler merges
  the sorted streams (a k-way merge, one row per shard in hand);
- ``LIMIT`` / ``OFFSET`` (constants): each shard returns at most LIMIT + OFFSET rows,
  the pooler skips OFFSET and stops at LIMIT;
- ``count``, ``sum``, ``min``, ``max``, ``avg`` (no DISTINCT, FILTER or ORDER BY inside)
  as whole result columns: each shard aggregates its rows, the pooler combines
  (``avg(x)`` runs as ``sum(x)`` and a hidden ``count(x)`` column);
- ``GROUP BY`` result columns, with those aggregates: each shard sorts its groups
  (by the group columns: the user's ORDER BY if it is exactly those, else one we add)
  and the pooler merges them, combining equal groups as they meet.

Each shard runs the query over its own rows: joins and plain subqueries are right
for tables sharded on the same key and joined on it (co-located), or copied to every
shard; a subquery or WITH query that computes over all its rows (aggregates,
DISTINCT, GROUP BY, LIMIT, windows) would be wrong per shard and is refused.

Refused (Unmergeable, naming the shape): UNION / INTERSECT / EXCEPT, DISTINCT,
HAVING, window functions, GROUPING SETS / ROLLUP / CUBE, an aggregate inside an
expression (``sum(x) + 1``) or other than the five, aggregates with DISTINCT /
FILTER / ORDER BY / WITHIN GROUP, ORDER BY or GROUP BY something that is not a result
column, ORDER BY an aggregate with GROUP BY, LIMIT / OFFSET that are not constants,
FETCH ... WITH TIES, and several statements in one query. The column types are only
known once the shards answer; the engine refuses there what it cannot compare (see
:mod:`pgsansio.engine._fanout`). User-defined aggregates cannot be told from
functions: do not fan them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import ast as _ast
from pglast import parse_sql
from pglast.enums import LimitOption, SetOperation, SortByDir, SortByNulls
from pglast.parser import ParseError
from pglast.stream import RawStream

# pglast's node classes, untyped: every field of every node may be None in its
# annotations, which says nothing here (the parser fills what the grammar gives).
ast: Any = _ast

__all__ = ["Aggregate", "FanOutPlan", "SortKey", "Unmergeable", "plan_fan_out"]

_MERGED = frozenset({"count", "sum", "min", "max", "avg"})
# Aggregates of PostgreSQL that cannot be combined from per-shard results.
_OTHER_AGGREGATES = frozenset(
    {
        "array_agg",
        "string_agg",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "xmlagg",
        "bool_and",
        "bool_or",
        "every",
        "bit_and",
        "bit_or",
        "bit_xor",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "corr",
        "covar_pop",
        "covar_samp",
        "regr_avgx",
        "regr_avgy",
        "regr_count",
        "regr_intercept",
        "regr_r2",
        "regr_slope",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "range_agg",
        "range_intersect_agg",
        "any_value",
    }
)


@dataclass(frozen=True, slots=True)
class SortKey:
    """One ORDER BY item: result column ``column`` (0-based), or, when the result is
    ``*``, the column named ``name`` (found in the shards' RowDescription)."""

    column: int | None
    name: str | None
    descending: bool
    nulls_first: bool
    c_collation: bool  # COLLATE "C" (or "POSIX") written: text compares as bytes


@dataclass(frozen=True, slots=True)
class Aggregate:
    """How a result column is combined: ``kind`` (count, sum, min, max, avg); for avg,
    the hidden column holding the shard's count."""

    kind: str
    count_column: int | None = None


@dataclass(frozen=True, slots=True)
class FanOutPlan:
    """What every shard runs (``sql``) and how the answers become one."""

    sql: str
    columns: int | None  # result columns the client sees (None: all, no hidden ones)
    aggregates: tuple[Aggregate | None, ...] | None  # per column; None: no aggregation
    grouped: bool  # GROUP BY: the columns without an Aggregate are the group key
    order: tuple[SortKey, ...]
    limit: int | None
    offset: int


@dataclass(frozen=True, slots=True)
class Unmergeable:
    """Why the query cannot run across shards, for an ErrorResponse (0A000)."""

    message: str


def _funcname(node: Any) -> str:
    return str(node.funcname[-1].sval).lower()


def _walk(node: object) -> list[Any]:
    """Every node under ``node`` (itself included), depth first."""
    found: list[Any] = []
    stack: list[object] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Node):
            found.append(n)
            if isinstance(n, ast.SelectStmt) and n is not node:
                continue  # a subquery aggregates on its own
            stack.extend(getattr(n, slot, None) for slot in n.__slots__)
        elif isinstance(n, (list, tuple)):
            stack.extend(n)
    return found


def _text(node: Any) -> str:
    return str(RawStream()(node))


def _const_int(node: object, what: str) -> int | Unmergeable | None:
    """A LIMIT / OFFSET value: an integer constant, None for ALL / NULL / absent."""
    if node is None:
        return None
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        if isinstance(node.val, ast.Integer):
            return int(node.val.ival)
    return Unmergeable(f"{what} that is not an integer constant is not merged across shards")


def _writes(stmt: Any) -> bool:
    if isinstance(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
        return True
    if isinstance(stmt, ast.CopyStmt):
        return bool(stmt.is_from)
    if isinstance(stmt, ast.SelectStmt):
        if stmt.intoClause is not None:
            return True
        with_clause = stmt.withClause
        if with_clause is not None:
            for cte in with_clause.ctes or ():
                if isinstance(cte, ast.CommonTableExpr) and _writes(cte.ctequery):
                    return True
    return False


def _reads_a_table(stmt: Any) -> bool:
    return bool(stmt.fromClause)


@lru_cache(maxsize=2048)
def plan_fan_out(sql: str) -> FanOutPlan | Unmergeable | None:
    """See the module docstring. Never raises (a text that does not parse is left to
    the server: None)."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    if not stmts:
        return None
    bodies = [raw.stmt for raw in stmts]
    if any(_writes(b) for b in bodies):
        return Unmergeable(
            "a write with no sharding key cannot run across shards: name the key "
            "(in the statement, a comment or SET SHARDING KEY) or choose a shard with "
            "SET SHARD"
        )
    if len(bodies) > 1:
        if any(isinstance(b, ast.SelectStmt) for b in bodies):
            return Unmergeable(
                "a query of several statements with no sharding key is not run across "
                "shards: send them one by one"
            )
        return None
    stmt = bodies[0]
    if not isinstance(stmt, ast.SelectStmt):
        return None
    if stmt.op != SetOperation.SETOP_NONE:
        return Unmergeable("UNION, INTERSECT and EXCEPT are not merged across shards")
    if stmt.valuesLists or not _reads_a_table(stmt):
        return None
    return _plan_select(stmt)


def _nested_selects(stmt: Any) -> list[Any]:
    """Every SELECT inside ``stmt`` (subqueries, WITH queries), at any depth."""
    found: list[Any] = []
    stack: list[object] = [getattr(stmt, slot, None) for slot in stmt.__slots__]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Node):
            if isinstance(n, ast.SelectStmt):
                found.append(n)
            stack.extend(getattr(n, slot, None) for slot in n.__slots__)
        elif isinstance(n, (list, tuple)):
            stack.extend(n)
    return found


def _over_all_rows(select: Any) -> bool:
    """Whether a subquery computes over all its rows (aggregates, DISTINCT, GROUP BY,
    LIMIT, windows...): on a shard it would see that shard's rows only."""
    return bool(
        select.groupClause
        or select.distinctClause
        or select.havingClause is not None
        or select.limitCount is not None
        or select.limitOffset is not None
        or select.windowClause
        or any(
            _aggregate_inside(t.val) or _window_inside(t.val)
            for t in select.targetList or ()
            if isinstance(t, ast.ResTarget)
        )
    )


def _window_inside(node: Any) -> bool:
    return any(isinstance(n, ast.FuncCall) and n.over is not None for n in _walk(node))


def _plan_select(stmt: Any) -> FanOutPlan | Unmergeable:
    if any(_over_all_rows(sub) for sub in _nested_selects(stmt)):
        return Unmergeable(
            "a subquery or WITH query with aggregates, DISTINCT, GROUP BY, LIMIT or "
            "window functions is not merged across shards: each shard would compute it "
            "over its own rows only"
        )
    if stmt.distinctClause:
        return Unmergeable("DISTINCT is not merged across shards")
    if stmt.havingClause is not None:
        return Unmergeable("HAVING is not merged across shards")
    if stmt.windowClause:
        return Unmergeable("window functions are not merged across shards")
    if stmt.limitOption == LimitOption.LIMIT_OPTION_WITH_TIES:
        return Unmergeable("FETCH ... WITH TIES is not merged across shards")
    targets = list(stmt.targetList or ())
    star = False
    aggregates: list[Aggregate | None] = []
    extra: list[Any] = []
    for i, target in enumerate(targets):
        assert isinstance(target, ast.ResTarget)
        val = target.val
        if isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star):
            star = True
            aggregates.append(None)
            continue
        if _window_inside(val):
            return Unmergeable("window functions are not merged across shards")
        if isinstance(val, ast.FuncCall) and _funcname(val) in _MERGED:
            function = _funcname(val)
            if val.agg_distinct:
                return Unmergeable(f"{function}(DISTINCT ...) is not merged across shards")
            if val.agg_filter is not None or val.agg_order or val.agg_within_group:
                return Unmergeable(
                    f"{function}() with FILTER, ORDER BY or WITHIN GROUP is not merged "
                    "across shards"
                )
            if val.args and any(_aggregate_inside(a) for a in val.args):
                return Unmergeable("nested aggregates are not merged across shards")
            if function == "avg":
                # avg(x) runs as sum(x), with count(x) in a hidden column at the end.
                hidden = len(targets) + len(extra)
                count = ast.FuncCall(funcname=(ast.String(sval="count"),), args=val.args)
                extra.append(ast.ResTarget(name=f"pgsansio_count_{i}", val=count))
                targets[i] = ast.ResTarget(
                    name=target.name or "avg",
                    val=ast.FuncCall(funcname=(ast.String(sval="sum"),), args=val.args),
                )
                aggregates.append(Aggregate("avg", hidden))
            else:
                aggregates.append(Aggregate(function))
            continue
        inner = _aggregate_inside(val)
        if inner is not None:
            return Unmergeable(
                f"{inner}() is not merged across shards"
                if inner not in _MERGED
                else f"an aggregate inside an expression ({inner}() ...) is not merged "
                "across shards: select the aggregate itself"
            )
        aggregates.append(None)
    aggregated = any(a is not None for a in aggregates)
    group = list(stmt.groupClause or ())
    if aggregated and star:
        return Unmergeable("* with aggregates is not merged across shards")
    grouped = bool(group)
    if grouped and not aggregated and not star:
        # GROUP BY without aggregates: the distinct values, merged as groups.
        aggregated = True
    if star and grouped:
        return Unmergeable("* with GROUP BY is not merged across shards")
    group_columns: list[int] = []
    for item in group:
        if isinstance(item, (ast.GroupingSet,)):
            return Unmergeable("GROUPING SETS, ROLLUP and CUBE are not merged across shards")
        column = _result_column(item, targets, stmt.targetList)
        if column is None:
            return Unmergeable(
                f"GROUP BY {_text(item)}, which is not a result column, is not merged "
                "across shards: select it too"
            )
        if aggregates[column] is not None:
            return Unmergeable("GROUP BY an aggregate is not possible")
        group_columns.append(column)
    if grouped and sorted(set(group_columns)) != [
        i for i, a in enumerate(aggregates) if a is None
    ]:
        return Unmergeable(
            "every result column that is not an aggregate must be in GROUP BY to be "
            "merged across shards"
        )
    order: list[SortKey] = []
    for item in stmt.sortClause or ():
        assert isinstance(item, ast.SortBy)
        if item.useOp:
            return Unmergeable("ORDER BY ... USING is not merged across shards")
        node = item.node
        c_collation = False
        if isinstance(node, ast.CollateClause):
            collation = [str(n.sval) for n in node.collname]
            c_collation = collation[-1] in ("C", "POSIX")
            node = node.arg
        column = _result_column(node, targets, stmt.targetList)
        name: str | None = None
        if column is None:
            if star and isinstance(node, ast.ColumnRef) and len(node.fields) == 1:
                name = str(node.fields[0].sval)
            else:
                return Unmergeable(
                    f"ORDER BY {_text(item.node)}, which is not a result column, is not "
                    "merged across shards: select it too"
                )
        elif aggregates[column] is not None and grouped:
            return Unmergeable("ORDER BY an aggregate with GROUP BY is not merged across shards")
        descending = item.sortby_dir == SortByDir.SORTBY_DESC
        if item.sortby_nulls == SortByNulls.SORTBY_NULLS_DEFAULT:
            nulls_first = descending
        else:
            nulls_first = item.sortby_nulls == SortByNulls.SORTBY_NULLS_FIRST
        order.append(SortKey(column, name, descending, nulls_first, c_collation))
    limit = _const_int(stmt.limitCount, "LIMIT")
    if isinstance(limit, Unmergeable):
        return limit
    offset = _const_int(stmt.limitOffset, "OFFSET")
    if isinstance(offset, Unmergeable):
        return offset
    offset = max(offset or 0, 0)
    if grouped:
        ordered = {k.column for k in order}
        if order and ordered != set(group_columns):
            return Unmergeable(
                "with GROUP BY, an ORDER BY is merged across shards only when it lists "
                "exactly the GROUP BY columns"
            )
        if not order:
            # Sorted by the group key, so that equal groups meet in the merge.
            order = [SortKey(c, None, False, False, False) for c in group_columns]
            stmt.sortClause = tuple(
                ast.SortBy(
                    node=ast.A_Const(val=ast.Integer(ival=c + 1)),
                    sortby_dir=SortByDir.SORTBY_DEFAULT,
                    sortby_nulls=SortByNulls.SORTBY_NULLS_DEFAULT,
                )
                for c in group_columns
            )
    elif aggregated:
        order = []  # one row: nothing to order
        stmt.sortClause = None
    if aggregated and not grouped:
        stmt.limitCount = None  # one row per shard, combined; LIMIT/OFFSET apply after
        stmt.limitOffset = None
        stmt.limitOption = LimitOption.LIMIT_OPTION_DEFAULT
    elif limit is not None or offset:
        stmt.limitOffset = None
        if limit is not None:
            stmt.limitCount = ast.A_Const(val=ast.Integer(ival=limit + offset))
    stmt.targetList = tuple(targets) + tuple(extra)
    return FanOutPlan(
        sql=_text(stmt),
        columns=len(targets) if extra else None,
        aggregates=tuple(aggregates) if aggregated else None,
        grouped=grouped,
        order=tuple(order),
        limit=limit,
        offset=offset,
    )


def _aggregate_inside(node: Any) -> str | None:
    for n in _walk(node):
        if isinstance(n, ast.FuncCall):
            name = _funcname(n)
            if name in _MERGED or name in _OTHER_AGGREGATES:
                return name
    return None


def _result_column(node: Any, targets: list[Any], original: tuple[Any, ...] | None) -> int | None:
    """Which result column ``node`` (a GROUP BY or ORDER BY item) is: a position, an
    output name, or the same expression as a result column's."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        i = int(node.val.ival) - 1
        return i if 0 <= i < len(targets) else None
    if isinstance(node, ast.ColumnRef) and len(node.fields) == 1:
        name = node.fields[0]
        if isinstance(name, ast.String):
            for i, t in enumerate(original or ()):
                if t.name == name.sval:
                    return i
    text = _text(node)
    for i, t in enumerate(original or ()):
        if t.val is not None and not isinstance(t.val, ast.A_Star) and _text(t.val) == text:
            return i
    return None


class InsertSplit:
    """A multi-row ``INSERT INTO t (..., key, ...) VALUES (...), ...`` whose key is a
    literal in every row: each row's key (``keys``, as written) and the statement for
    any of its rows (:meth:`sql`), so that each shard gets its own rows."""

    def __init__(self, stmt: Any, keys: tuple[str, ...]) -> None:
        self._stmt = stmt
        self._rows = stmt.selectStmt.valuesLists
        self.keys = keys

    def sql(self, rows: list[int]) -> str:
        """The INSERT of rows ``rows`` (indexes into ``keys``) only."""
        select = self._stmt.selectStmt
        select.valuesLists = tuple(self._rows[i] for i in rows)
        try:
            return _text(self._stmt)
        finally:
            select.valuesLists = self._rows


def one_statement(sql: str) -> ast.Node | None:
    """The statement of ``sql`` if it is one that parses; else None."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    return stmts[0].stmt if len(stmts) == 1 else None


def split_insert(sql: str, key: str) -> InsertSplit | None:
    """The rows of ``sql`` by key, if it is one INSERT ... VALUES of several rows into
    the table of ``key`` (``table.column`` or ``*.column``, automatic_sharding_key's
    form), naming the column, each row's key a literal; else None. RETURNING and
    WITH are not split (their answers would have to be merged)."""
    table, _, column = key.rpartition(".")
    stmt = one_statement(sql)
    if not isinstance(stmt, ast.InsertStmt) or stmt.withClause or stmt.returningClause:
        return None
    if table not in ("*", stmt.relation.relname):
        return None
    cols = [c.name for c in stmt.cols or ()]
    select = stmt.selectStmt
    if column not in cols or not isinstance(select, ast.SelectStmt):
        return None
    rows = select.valuesLists
    if not rows or len(rows) < 2 or select.withClause:
        return None
    index = cols.index(column)
    keys: list[str] = []
    for row in rows:
        items = row if isinstance(row, (list, tuple)) else row.items
        value = items[index] if index < len(items) else None
        if isinstance(value, ast.TypeCast):
            value = value.arg
        if not isinstance(value, ast.A_Const) or value.isnull:
            return None
        literal = value.val
        if isinstance(literal, ast.Integer):
            keys.append(str(literal.ival))
        elif isinstance(literal, ast.Float):
            keys.append(str(literal.fval))
        elif isinstance(literal, ast.String):
            keys.append(str(literal.sval))
        else:
            return None
    return InsertSplit(stmt, tuple(keys))
