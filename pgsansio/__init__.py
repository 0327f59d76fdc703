"""pgsansio: a sans-IO PostgreSQL protocol library and connection pooler.

``import pgsansio`` gives the protocol library (no runtime dependencies); the
pooler, CLI and tools live in submodules and import their dependencies lazily.
"""

from .protocol import *  # noqa: F403
from .protocol import __all__ as _protocol_all

__version__ = "0.1.0"
__all__ = [*_protocol_all, "__version__"]  # noqa: PLE0604
