"""Counters behind SHOW STATS / STATS_TOTALS / STATS_AVERAGES / TOTALS and /metrics.

The ``Stats`` part of the engine. One :class:`DbStats` per database (pool name),
kept across reloads, with PgBouncer's meaning for each counter:

- a *query* is one request answered by ReadyForQuery (a simple Query, or an extended
  batch up to its Sync); its time runs from when it was sent to a server to that
  ReadyForQuery;
- a *transaction* ends at a ReadyForQuery ``I`` and runs from its first query;
- *wait time* is how long clients waited for a server before one was assigned;
- bytes are counted as received from and sent to clients.

The relay only adds to attributes of the client's ``DbStats`` (no allocation, no
lookup on the hot path). Averages are per second (counts, bytes) or per event (times),
over the last complete ``STATS_PERIOD``, recomputed on a timer as PgBouncer does with
its ``stats_period``. Times are kept in seconds (floats) and shown in microseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._context import Context
    from ._objects import Client

__all__ = ["STATS_COLUMNS", "STATS_PERIOD", "TOTAL_COLUMNS", "DbStats", "Stats", "averages"]

STATS_PERIOD = 60.0
"""Seconds between two computations of the averages (PgBouncer's ``stats_period``)."""

# (counter attribute, SHOW STATS_TOTALS column): PgBouncer 1.25's order.
TOTAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("server_assignment_count", "server_assignment_count"),
    ("xact_count", "xact_count"),
    ("query_count", "query_count"),
    ("received", "bytes_received"),
    ("sent", "bytes_sent"),
    ("xact_time", "xact_time"),
    ("query_time", "query_time"),
    ("wait_time", "wait_time"),
    ("client_parse_count", "client_parse_count"),
    ("server_parse_count", "server_parse_count"),
    ("bind_count", "bind_count"),
    ("client_login_count", "client_login_count"),
)
_TIMES = frozenset({"xact_time", "query_time", "wait_time"})
# (counter attribute, SHOW STATS total_ column, SHOW STATS avg_ column).
STATS_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    (
        attr,
        f"total_{attr}",
        "avg_recv" if attr == "received" else f"avg_{attr}",
    )
    for attr, _ in TOTAL_COLUMNS
)


def averages(delta: dict[str, int], seconds: float) -> dict[str, int]:
    """PgBouncer's averages of one period: counts and bytes per second, times per
    transaction / query / server assignment (µs)."""
    per: dict[str, int] = {}
    for attr, _ in TOTAL_COLUMNS:
        if attr == "xact_time":
            n = delta["xact_count"]
        elif attr == "query_time":
            n = delta["query_count"]
        elif attr == "wait_time":
            n = delta["server_assignment_count"]
        else:
            per[attr] = round(delta[attr] / seconds) if seconds > 0 else 0
            continue
        per[attr] = delta[attr] // n if n else 0
    return per


class DbStats:
    """The counters of one database, and the averages of the last period."""

    __slots__ = (
        "averages",
        "bind_count",
        "client_login_count",
        "client_parse_count",
        "period",
        "period_seconds",
        "previous",
        "query_count",
        "query_time",
        "received",
        "sent",
        "server_assignment_count",
        "server_parse_count",
        "wait_time",
        "xact_count",
        "xact_time",
    )

    def __init__(self) -> None:
        self.server_assignment_count = 0
        self.xact_count = 0
        self.query_count = 0
        self.received = 0
        self.sent = 0
        self.xact_time = 0.0
        self.query_time = 0.0
        self.wait_time = 0.0
        self.client_parse_count = 0
        self.server_parse_count = 0
        self.bind_count = 0
        self.client_login_count = 0
        self.previous: dict[str, int] = {}  # totals at the start of the period
        self.period: dict[str, int] = {}  # what changed during the last period
        self.period_seconds = 0.0
        self.averages: dict[str, int] = {attr: 0 for attr, _ in TOTAL_COLUMNS}

    def totals(self) -> dict[str, int]:
        """Every counter as PgBouncer shows it: counts, bytes, and times in µs."""
        out: dict[str, int] = {}
        for attr, _ in TOTAL_COLUMNS:
            value = getattr(self, attr)
            out[attr] = round(value * 1_000_000) if attr in _TIMES else int(value)
        return out

    def roll(self, seconds: float) -> None:
        """End a period of ``seconds``: averages from what changed during it."""
        now = self.totals()
        prev = self.previous
        self.period = {k: now[k] - prev.get(k, 0) for k in now}
        self.period_seconds = seconds
        self.averages = averages(self.period, seconds)
        self.previous = now

    def absorb(self, other: DbStats) -> None:
        """Add ``other``'s counters and last period to these (SHOW TOTALS)."""
        for attr, _ in TOTAL_COLUMNS:
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        for k, v in other.period.items():
            self.period[k] = self.period.get(k, 0) + v
        self.period_seconds = max(self.period_seconds, other.period_seconds)
        if self.period:
            self.averages = averages(self.period, self.period_seconds)


NOWHERE = DbStats()
"""What a client counts into before it has a database (never shown)."""


class Stats:
    """Owns the counters of every database and the averages of the last period."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.by_db: dict[str, DbStats] = {}
        self.stats_rolled = 0.0

    stats: dict[str, DbStats]
    _stats_rolled: float

    def stats_for(self, database: str) -> DbStats:
        st = self.by_db.get(database)
        if st is None:
            st = self.by_db[database] = DbStats()
        return st

    def stats_start(self, now: float) -> None:
        self.stats_rolled = now
        self.ctx.at(now + STATS_PERIOD, self._stats_roll)

    def _stats_roll(self) -> None:
        seconds = self.ctx.now - self.stats_rolled
        self.stats_rolled = self.ctx.now
        for st in self.by_db.values():
            st.roll(seconds)
        self.ctx.at(self.ctx.now + STATS_PERIOD, self._stats_roll)

    def count_query(self, c: Client, status: str) -> None:
        """A client's request got its ReadyForQuery (called by the relay)."""
        st = c.stats
        now = self.ctx.now
        st.query_count += 1
        if c.query_start is not None:
            st.query_time += now - c.query_start
            c.query_start = None
        if status == "I":
            st.xact_count += 1
            if c.xact_start is not None:
                st.xact_time += now - c.xact_start
                c.xact_start = None
