"""The anyio frontend: anyio on asyncio (``--frontend anyio``) or on trio (``trio``).

:func:`run` starts an event loop of the chosen backend and blocks until the pooler
exits; :func:`serve` runs inside an anyio-compatible loop the caller already has (a
trio application can run the pooler in one of its nurseries). Both return the exit code.
"""

from __future__ import annotations

from ._server import AnyioFrontend, AnyioOnAsyncio, make_frontend, run, serve

__all__ = ["AnyioFrontend", "AnyioOnAsyncio", "make_frontend", "run", "serve"]
