"""The demo's banner tells a first-time user everything the demo offers.

The real demo (clusters, pooler, psql, the console, /metrics) runs in
tests/test_frontends.py::test_demo_runs_and_cleans_up; here the banner and the config
are checked word for word, which needs no PostgreSQL.
"""

from __future__ import annotations

from pgsansio.config import parse_config
from pgsansio.demo import demo_banner, demo_config


def banner() -> str:
    return demo_banner(
        pooler=("127.0.0.1", 6432),
        primary=("127.0.0.1", 40001),
        replica=("127.0.0.1", 40002),
        version="15.8",
        config_path="/tmp/pgsansio-demo-x/pgcat.toml",
        metrics_port=9930,
    )


def test_the_banner_shows_how_to_connect_to_each_part() -> None:
    text = banner()
    assert "  PGPASSWORD=demo psql -h 127.0.0.1 -p 6432 -U demo demo\n" in text
    assert "The admin console (user admin, password admin; database pgbouncer or pgcat):" in text
    assert (
        "  PGPASSWORD=admin psql -h 127.0.0.1 -p 6432 -U admin pgbouncer -c 'SHOW POOLS'\n" in text
    )
    assert "  curl http://127.0.0.1:9930/metrics\n" in text
    assert "  primary  PostgreSQL 15.8 on 127.0.0.1:40001\n" in text
    assert "  replica  streaming from it on 127.0.0.1:40002\n" in text


def test_the_banner_says_a_client_reads_its_own_writes() -> None:
    text = " ".join(banner().split())
    assert (
        "After you write, your own reads go to the primary until the replica has replayed the "
        "write (read_your_writes), so a table you have just created is found at once; another "
        "session's writes may take a moment (up to about 200 ms here) to show on the replica."
    ) in text
    assert "Inside a transaction (BEGIN ... COMMIT) every statement goes to the primary" in text
    assert "/* pgsansio_role: primary */" in text


def test_the_demo_config_turns_metrics_on_and_is_warning_free() -> None:
    config = parse_config(
        demo_config(
            port=6432, primary=("127.0.0.1", 1), replica=("127.0.0.1", 2), metrics_port=9931
        )
    )
    general = config.general
    assert general.enable_prometheus_exporter and general.prometheus_exporter_port == 9931
    assert (general.admin_username, general.admin_password) == ("admin", "admin")
    assert config.warnings == ()
    assert config.pools["demo"].read_your_writes
