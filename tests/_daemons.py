"""The real daemons side by side: ``pgsansio run`` and PgBouncer as processes of their own.

The reliability suite measures what an operator would run: the pooler as its own
process (so the test's client load never shares a GIL with it), next to PgBouncer
with the same pool, and (for before/after figures) another source tree's pgsansio.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from _build import pythonpath

from pgsansio.testing.cluster import TEST_DATABASE, Cluster, _get_run_as

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
# The daemon bench's process handling, shared (it names what failed and how).
from pooler_bench import free_port, stop, wait_for_port  # noqa: E402

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
USER = "trust_user"


@dataclass
class Daemon:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory now, in KiB (VmRSS)."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS")


def _toml_keys(keys: dict[str, object]) -> str:
    return "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())


def pgsansio_toml(
    port: int,
    pg: Cluster,
    pool_size: int,
    general: dict[str, object],
    pool: dict[str, object] | None = None,
) -> str:
    extra = _toml_keys(general)
    return f"""\
[general]
host = "127.0.0.1"
port = {port}
admin_username = "admin"
admin_password = "admin"
shutdown_timeout = 2000
{extra}
[pools.{TEST_DATABASE}]
pool_mode = "transaction"
{_toml_keys(pool or {})}
[pools.{TEST_DATABASE}.users.0]
username = "{USER}"
password = "unused: trust"
auth_type = "trust"
pool_size = {pool_size}

[pools.{TEST_DATABASE}.shards.0]
database = "{TEST_DATABASE}"
servers = [["127.0.0.1", {pg.port}, "primary"]]
"""


@contextlib.contextmanager
def pgsansio(
    pg: Cluster,
    work: pathlib.Path,
    *,
    frontend: str = "uvloop",
    tree: pathlib.Path = ROOT,
    pool_size: int = 4,
    general: dict[str, object] | None = None,
    pool: dict[str, object] | None = None,
    name: str = "",
) -> Iterator[Daemon]:
    """``pgsansio run`` from source tree ``tree`` (another tree: a before/after figure)."""
    name = name or f"pgsansio-{frontend}"
    port = free_port()
    toml = work / f"{name}.toml"
    toml.write_text(pgsansio_toml(port, pg, pool_size, general or {}, pool))
    log = work / f"{name}.log"
    cmd = [sys.executable, "-m", "pgsansio", "run", str(toml), "--frontend", frontend]
    cmd += ["--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": pythonpath(tree)}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=tree, env=env)
    try:
        wait_for_port(port, proc, name, log)
        yield Daemon(name, port, proc)
    finally:
        stop(proc)


@contextlib.contextmanager
def pgbouncer(
    pg: Cluster, *, pool_size: int = 4, max_client_conn: int = 20000, extra: str = ""
) -> Iterator[Daemon]:
    """PgBouncer 1.18 with the same pool (trust, transaction mode), as an unprivileged user.

    Its files live in a directory of their own that this user can reach (pytest's
    temporary directories are private to root).
    """
    with tempfile.TemporaryDirectory(prefix="pgsansio-bouncer-") as where:
        work = pathlib.Path(where)
        work.chmod(0o755)
        with _pgbouncer(pg, work, pool_size, max_client_conn, extra) as daemon:
            yield daemon


@contextlib.contextmanager
def _pgbouncer(
    pg: Cluster, work: pathlib.Path, pool_size: int, max_client_conn: int, extra: str
) -> Iterator[Daemon]:
    port = free_port()
    ini, users, log = work / "pgbouncer.ini", work / "userlist.txt", work / "pgbouncer.log"
    ini.write_text(f"""\
[databases]
{TEST_DATABASE} = host=127.0.0.1 port={pg.port} dbname={TEST_DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
log_connections = 0
log_disconnections = 0
logfile = {log}
{extra}""")
    users.write_text(f'"{USER}" ""\n')
    log.touch()
    run_as = _get_run_as()
    for path in (work, ini, users, log):
        if run_as is not None:
            os.chown(path, run_as.uid, run_as.gid)
    proc = subprocess.Popen(
        [PGBOUNCER, str(ini)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
    )
    try:
        wait_for_port(port, proc, "pgbouncer", log)
        yield Daemon("pgbouncer", port, proc)
    finally:
        stop(proc)


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Figures go to stdout (make reliability runs pytest with -s) and the log."""
    width = max(len(name) for name, _ in rows)
    text = "\n".join(f"  {name:<{width}}  {figures}" for name, figures in rows)
    print(f"\n{title}\n{text}", flush=True)
