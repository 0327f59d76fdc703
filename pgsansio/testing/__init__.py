"""Helpers for testing code that talks to PostgreSQL: throwaway clusters.

Kept out of the core package's import graph; nothing here is imported by
``pgsansio`` itself. See :mod:`pgsansio.testing.cluster` for how binaries are found and
how running as root is handled.
"""

from pgsansio.testing.cluster import (
    AUTH_METHODS,
    SUPERUSER,
    TEST_DATABASE,
    TEST_USERS,
    Cluster,
    ClusterError,
    find_bindir,
)

__all__ = [
    "AUTH_METHODS",
    "SUPERUSER",
    "TEST_DATABASE",
    "TEST_USERS",
    "Cluster",
    "ClusterError",
    "find_bindir",
]
