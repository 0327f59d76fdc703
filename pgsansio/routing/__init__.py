"""Read/write classification of SQL text, for read/write splitting.

The engine asks :class:`Router` whether a query may run on a replica. The answer is a
:class:`Decision`; the engine owns what to do with it (which server, whether a hint or a
custom command is honoured). This package is pure: no I/O, no clock, no state beyond a
bounded cache of decisions keyed by the exact query text.

Why this package is separate: it is the only part of pgsansio that imports
`pglast <https://github.com/lelit/pglast>`_, the PostgreSQL parser (libpg_query)
wrapped for Python, which is licensed GPL-3.0-or-later. Keeping the import here, and
pglast in the optional ``routing`` extra, means the protocol library and the pooler
without read/write splitting stay MIT and install without it.
"""

from __future__ import annotations

from ._router import Decision, Router

__all__ = ["Decision", "Router"]
