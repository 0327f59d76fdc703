"""The curio frontend.

:func:`run` starts a curio kernel and blocks until the pooler exits; :func:`serve` runs
inside a kernel the caller already has. Both return the exit code.
"""

from __future__ import annotations

from ._server import CurioFrontend, run, serve

__all__ = ["CurioFrontend", "run", "serve"]
