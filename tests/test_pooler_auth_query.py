"""auth_query pass-through against real PostgreSQL: md5 hashes and SCRAM verifiers.

Users listed without a password get their secret from the server (PgCat's and
PgBouncer's ``auth_query``); the client is challenged with the method the secret
allows, and the pooler then logs in to the server with what the client proved.
"""

from __future__ import annotations

import psycopg
import pytest
from _pooler import make_config, running

from pgsansio.testing.cluster import TEST_DATABASE, Cluster

pytestmark = pytest.mark.usefixtures("pooler_frontend")

AUTH_QUERY = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"


def _config(cluster: Cluster, users: tuple[str, ...]) -> object:
    return make_config(
        cluster,
        users=users,
        user={"password": None, "auth_type": "md5"},
        pool={
            "auth_query": AUTH_QUERY,
            "auth_query_user": cluster.superuser,
            "auth_query_password": "unused-trust",
        },
    )


@pytest.mark.parametrize(
    "user,password", [("md5_user", "md5-secret"), ("scram_user", "scram-secret")]
)
def test_auth_query_logs_in_with_the_stored_secret(
    pg15: Cluster, user: str, password: str
) -> None:
    with running(_config(pg15, (user,))) as p:  # type: ignore[arg-type]
        for _ in range(2):  # the second login reuses nothing but the pool
            with psycopg.connect(p.dsn(user, password)) as conn:
                assert conn.execute("select current_user").fetchone() == (user,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(p.dsn(user, "wrong"))


def test_auth_query_unknown_user_fails_like_a_wrong_password(pg15: Cluster) -> None:
    with running(_config(pg15, ("md5_user", "nobody_here"))) as p:  # type: ignore[arg-type]
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(p.dsn("nobody_here", "x", dbname=TEST_DATABASE))
        assert 'password authentication failed for user "nobody_here"' in str(info.value)
