"""pytest-benchmark figures for the read/write classifier (group "routing").

Run: ``.venv/bin/python -m pytest -q bench/test_bench_routing.py --benchmark-enable
--benchmark-only --benchmark-columns=min,median,ops``. The uncached cases call
``Router(cache_size=0)``, which parses every time: what a query the pooler has not
seen before costs. The cached case is what every repeat of a statement costs.
"""

from __future__ import annotations

from typing import Any

import pytest

from pgsansio.routing import Router

SELECT = (
    "SELECT u.id, u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id"
    " WHERE u.id = 42 AND o.created_at > now() - interval '1 day' ORDER BY o.total DESC"
    " LIMIT 10"
)
SIMPLE_SELECT = "SELECT id, name, email FROM users WHERE id = 12345"
INSERT = "INSERT INTO orders (user_id, total, note) VALUES (42, 99.5, 'hello') RETURNING id"
# A 2 KB reporting query: joins, a CTE, aggregates, CASE, a subquery, IN lists.
BIG = (
    "WITH recent AS (SELECT o.user_id, sum(o.total) AS spent, count(*) AS n FROM orders o"
    " WHERE o.created_at > now() - interval '30 days' GROUP BY o.user_id) "
    "SELECT u.id, u.name, lower(u.email) AS email, r.spent, r.n, "
    + ", ".join(
        f"CASE WHEN r.spent > {i * 100} THEN 'tier{i}' ELSE NULL END AS t{i}" for i in range(18)
    )
    + " FROM users u JOIN recent r ON r.user_id = u.id"
    " LEFT JOIN addresses a ON a.user_id = u.id AND a.kind = 'billing'"
    " WHERE u.country IN ("
    + ", ".join(f"'c{i:02d}'" for i in range(80))
    + ") AND EXISTS (SELECT 1 FROM logins l WHERE l.user_id = u.id"
    " AND l.at > now() - interval '7 days') ORDER BY r.spent DESC, u.id LIMIT 100"
)
assert 1900 < len(BIG) < 2200, len(BIG)


@pytest.mark.benchmark(group="routing")
def test_cached_lookup(benchmark: Any) -> None:
    router = Router()
    assert not router.classify(SELECT).write
    benchmark(router.classify, SELECT)


@pytest.mark.benchmark(group="routing")
@pytest.mark.parametrize(
    ("sql", "write"),
    [
        pytest.param(SIMPLE_SELECT, False, id="simple_select"),
        pytest.param(SELECT, False, id="select_join_now"),
        pytest.param(INSERT, True, id="insert"),
        pytest.param(BIG, False, id="select_2kb"),
        pytest.param("BEGIN", True, id="begin"),
    ],
)
def test_uncached(benchmark: Any, sql: str, write: bool) -> None:
    router = Router(cache_size=0)
    assert router.classify(sql).write is write
    benchmark(router.classify, sql)
