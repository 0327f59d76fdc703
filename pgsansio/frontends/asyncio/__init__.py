"""The asyncio frontend (and uvloop, which is asyncio with a faster loop).

:func:`run` starts a loop and blocks until the pooler exits; :func:`serve` runs inside
an event loop the caller already has. Both return the exit code.
"""

from __future__ import annotations

from ._server import AsyncioFrontend, run, serve

__all__ = ["AsyncioFrontend", "run", "serve"]
