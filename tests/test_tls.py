"""TLS end to end: the real engine on every frontend, real clients, real PostgreSQL.

Certificates are made here with trustme: one CA, and a certificate for ``localhost``
and ``127.0.0.1`` that the pooler presents to clients and a TLS-enabled PostgreSQL
presents to the pooler. Clients are psql (``sslmode=require`` and ``verify-full``) and
psycopg; ``SELECT ssl FROM pg_stat_ssl`` shows whether the pooler's own connection to
PostgreSQL is encrypted.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import trustme
from _pooler import Pooler, make_config, running

from pgsansio.config.model import Config
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("pooler_frontend"),
]

SERVER_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


class Pki:
    """A CA and files: the CA, a server certificate and key, a client certificate."""

    def __init__(self, where: pathlib.Path) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        client = self.ca.issue_cert("md5_user@example.com", common_name="md5_user")
        other = trustme.CA()
        self.ca_file = str(where / "ca.pem")
        self.other_ca_file = str(where / "other-ca.pem")
        self.cert = str(where / "cert.pem")
        self.key = str(where / "key.pem")
        self.client_cert = str(where / "client.pem")
        self.client_key = str(where / "client.key")
        self.ca.cert_pem.write_to_path(self.ca_file)
        other.cert_pem.write_to_path(self.other_ca_file)
        leaf.cert_chain_pems[0].write_to_path(self.cert)
        leaf.private_key_pem.write_to_path(self.key)
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)
        for path in (self.key, self.client_key):
            os.chmod(path, 0o600)  # libpq refuses a key others can read


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def pg_ssl(pki: Pki) -> Iterator[Cluster]:
    """PostgreSQL 15 with ssl = on and the test roles, for server_tls."""
    cluster = Cluster(version=15)
    try:
        cluster.init(ssl_cert=pki.cert, ssl_key=pki.key)
        cluster.start()
        cluster.add_test_users()
        cluster.create_database(TEST_DATABASE)
        yield cluster
    finally:
        cluster.cleanup()


def tls_config(cluster: Cluster, pki: Pki, **general: object) -> Config:
    return make_config(
        cluster,
        pool_size=2,
        users=("md5_user",),
        general={"tls_certificate": pki.cert, "tls_private_key": pki.key, **general},
    )


def dsn(p: Pooler, **options: str) -> str:
    password = TEST_USERS["md5_user"][1]
    extra = " ".join(f"{k}={v}" for k, v in options.items())
    return (
        f"host=127.0.0.1 port={p.port} user=md5_user password={password} "
        f"dbname={TEST_DATABASE} connect_timeout=10 {extra}"
    )


def psql(cluster: Cluster, conninfo: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(cluster.bindir / "psql"), "-XAtqw", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [*argv, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_psql_over_tls_require_and_verify_full(pg15: Cluster, pki: Pki) -> None:
    with running(tls_config(pg15, pki)) as p:
        required = psql(pg15, dsn(p, sslmode="require"), "-c", r"\conninfo", "-c", "SELECT 42")
        assert required.returncode == 0, required.stderr
        assert "SSL connection (protocol: TLSv1." in required.stdout
        assert required.stdout.strip().endswith("42")
        for host in ("localhost", "127.0.0.1"):
            full = psql(
                pg15,
                dsn(p, sslmode="verify-full", sslrootcert=pki.ca_file).replace(
                    "host=127.0.0.1", f"host={host}"
                ),
                "-c",
                r"\conninfo",
            )
            assert full.returncode == 0, full.stderr
            assert "SSL connection" in full.stdout
        wrong_ca = psql(pg15, dsn(p, sslmode="verify-full", sslrootcert=pki.other_ca_file))
        assert wrong_ca.returncode != 0
        assert "certificate verify failed" in wrong_ca.stderr


def test_psycopg_prefers_tls_and_clear_still_works(pg15: Cluster, pki: Pki) -> None:
    with running(tls_config(pg15, pki)) as p:
        with psycopg.connect(dsn(p, sslmode="prefer"), autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(dsn(p, sslmode="disable"), autocommit=True) as conn:
            assert not conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 2").fetchone() == (2,)


def test_require_refuses_clients_in_clear(pg15: Cluster, pki: Pki) -> None:
    with running(tls_config(pg15, pki, client_tls_sslmode="require")) as p:
        with pytest.raises(psycopg.OperationalError, match="SSL required") as info:
            psycopg.connect(dsn(p, sslmode="disable"))
        assert "28000" in str(info.value) or "SSL required" in str(info.value)
        with psycopg.connect(dsn(p, sslmode="require"), autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 3").fetchone() == (3,)


def test_verify_ca_wants_a_client_certificate_from_the_ca(pg15: Cluster, pki: Pki) -> None:
    config = tls_config(pg15, pki, client_tls_sslmode="verify-ca", client_tls_ca_file=pki.ca_file)
    with running(config) as p:
        certified = dsn(p, sslmode="require", sslcert=pki.client_cert, sslkey=pki.client_key)
        with psycopg.connect(certified, autocommit=True) as conn:
            assert conn.execute("SELECT 4").fetchone() == (4,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn(p, sslmode="require", sslcert="/nonexistent"))


def query_server_ssl(p: Pooler) -> bool:
    with psycopg.connect(dsn(p, sslmode="disable"), autocommit=True) as conn:
        row = conn.execute(SERVER_SSL).fetchone()
    assert row is not None
    return bool(row[0])


def verified_server_tls(cluster: Cluster, pki: Pki) -> Config:
    """TLS at both legs, the server's certificate checked against the test CA."""
    return tls_config(
        cluster,
        pki,
        server_tls=True,
        verify_server_certificate=True,
        server_tls_ca_file=pki.ca_file,
    )


def test_server_tls_to_postgres_with_verification(pg_ssl: Cluster, pki: Pki) -> None:
    config = verified_server_tls(pg_ssl, pki)
    with running(config) as p:
        assert query_server_ssl(p)


def test_server_tls_falls_back_to_clear_like_pgcat(pg15: Cluster, pki: Pki) -> None:
    with running(tls_config(pg15, pki, server_tls=True)) as p:
        assert not query_server_ssl(p)


@pytest.mark.parametrize(
    ("what", "settings", "message"),
    [
        ("unknown CA", {"server_tls_ca_file": "other"}, "certificate verify failed"),
        ("server without TLS", {}, "does not accept TLS"),
    ],
)
def test_server_verification_failures_reach_the_client_as_08001(
    request: pytest.FixtureRequest,
    pki: Pki,
    what: str,
    settings: dict[str, str],
    message: str,
) -> None:
    cluster: Cluster = request.getfixturevalue("pg_ssl" if settings else "pg15")
    ca = pki.other_ca_file if settings else pki.ca_file
    config = tls_config(
        cluster, pki, server_tls=True, verify_server_certificate=True, server_tls_ca_file=ca
    )
    with running(config) as p:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn(p, sslmode="disable"))
        assert message in str(info.value), what
        diag: Callable[[], Any] = lambda: getattr(info.value, "sqlstate", None)  # noqa: E731
        assert diag() in (None, "08001")


def test_a_large_result_crosses_both_tls_legs_intact(pg_ssl: Cluster, pki: Pki) -> None:
    """Several reads' worth (the asyncio adapter reads TLS into one shared buffer per
    driver and copies each read out): every byte arrives, in order, at both legs."""
    config = verified_server_tls(pg_ssl, pki)
    agg = "string_agg(md5(i::text), '' ORDER BY i)"
    sql = f"SELECT {agg}, md5({agg}) FROM generate_series(1, 40000) AS i"
    with running(config) as p, psycopg.connect(dsn(p, sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        for _ in range(2):
            row = conn.execute(sql).fetchone()
            assert row is not None
            assert len(row[0]) == 32 * 40000  # 1.25 MiB: five full reads of 256 KiB
            assert hashlib.md5(row[0].encode()).hexdigest() == row[1]
        assert query_server_ssl(p)
