"""What the engine needs to know from SQL text: read/write classification, for
read/write splitting, and sharding keys, for ``automatic_sharding_key``.

The engine asks :class:`Router` whether a query may run on a replica. The answer is a
:class:`Decision`; the engine owns what to do with it (which server, whether a hint or a
custom command is honoured). It asks a :class:`KeyFinder` which values a query compares
its sharding key to (:class:`ShardKeys`, see :mod:`._keys`); the engine hashes them and
chooses the shard. This package is pure: no I/O, no clock, no state beyond bounded
caches keyed by the exact query text.

Why this package is separate: it is the only part of pgsansio that imports
`pglast <https://github.com/lelit/pglast>`_, the PostgreSQL parser (libpg_query)
wrapped for Python, which is licensed GPL-3.0-or-later. Keeping the import here, and
pglast in the optional ``routing`` extra, means the protocol library and the pooler
without read/write splitting stay MIT and install without it.
"""

from __future__ import annotations

# _router first: without pglast, its ImportError says what to install.
from ._router import Decision, Router

# isort: split
from ._copy import CopyPlan, CopyRows, plan_copy
from ._fanout import (
    Aggregate,
    FanOutPlan,
    InsertSplit,
    SortKey,
    Unmergeable,
    plan_fan_out,
    split_insert,
)
from ._keys import NO_KEYS, KeyFinder, ShardKeys, find_keys

__all__ = [
    "NO_KEYS",
    "Aggregate",
    "CopyPlan",
    "CopyRows",
    "Decision",
    "FanOutPlan",
    "InsertSplit",
    "KeyFinder",
    "Router",
    "ShardKeys",
    "SortKey",
    "Unmergeable",
    "find_keys",
    "plan_copy",
    "plan_fan_out",
    "split_insert",
]
