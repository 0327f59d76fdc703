"""Idle clients through a network hiccup, in a private network namespace (a script).

Run as root under ``unshare -n`` (tests/test_reliability.py does): the namespace has
its own loopback, so ``tc`` may drop every packet on it for a while without touching
the machine. A PostgreSQL cluster, each pooler in turn and the clients all live in the
namespace. For each pooler: ``--clients`` clients log in and stay idle, the loopback
drops everything for ``--hiccup`` seconds, then every client runs ``select 1``. Prints
one JSON line per pooler: clients, how many answered, how many were reset or timed out.

Usage: unshare -n python tests/_hiccup.py --clients 2000 --hiccup 6 [--frontends uvloop,trio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import conftest
from _daemons import USER, pgbouncer, pgsansio
from _storm import raise_fd_limit
from _wire import query, startup_packet

from pgsansio.testing.cluster import TEST_DATABASE

READY = b"Z\x00\x00\x00\x05I"
OLD_CLIENT_SETTINGS = {
    "client_tcp_keepalives_idle": 5,
    "client_tcp_keepalives_interval": 5,
    "client_tcp_keepalives_count": 5,
    "client_tcp_user_timeout": 10000,
}
"""What client sockets got before they had settings of their own (PgCat's server side)."""


def tc(*args: str) -> None:
    subprocess.run(["tc", "qdisc", *args], check=True, capture_output=True)


async def _read_ready(reader: asyncio.StreamReader) -> bool:
    buf = b""
    while not buf.endswith(READY):
        chunk = await reader.read(4096)
        if not chunk:
            return False
        buf = (buf + chunk)[-64:]
    return True


async def _client(port: int, logged_in: asyncio.Queue[object]) -> object:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(startup_packet(USER, TEST_DATABASE))
    ok = await asyncio.wait_for(_read_ready(reader), 60)
    await logged_in.put(ok)
    return reader, writer


async def _check(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> str:
    reader, writer = pair
    try:
        writer.write(query("select 1"))
        ok = await asyncio.wait_for(_read_ready(reader), 30)
        return "ok" if ok else "closed"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "error"
    finally:
        writer.close()


async def _run(port: int, clients: int, hiccup: float, idle: float) -> dict[str, object]:
    logged_in: asyncio.Queue[object] = asyncio.Queue()
    pairs = []
    for i in range(0, clients, 200):  # in waves: the storm is another test
        wave = [_client(port, logged_in) for _ in range(min(200, clients - i))]
        pairs += await asyncio.gather(*wave)
    await asyncio.sleep(idle)
    # netem is often not built into the kernel: a token bucket of 8 bit/s holds every
    # packet in its queue instead (a local drop would not do: TCP sees it at once and
    # retries, as if nothing were lost on the way). Deleting it drops what it holds.
    tc("add", "dev", "lo", "root", "tbf", "rate", "8bit", "burst", "1600", "limit", "100mb")
    try:
        await asyncio.sleep(hiccup)
    finally:
        tc("del", "dev", "lo", "root")
    await asyncio.sleep(idle + 5)  # past any user timeout counted from the hiccup
    results = await asyncio.gather(*(_check(p) for p in pairs))
    return {k: results.count(k) for k in ("ok", "reset", "timeout", "closed", "error")}


def report(name: str, port: int, args: argparse.Namespace) -> None:
    started = time.monotonic()
    counts = asyncio.run(_run(port, args.clients, args.hiccup, args.idle))
    took = round(time.monotonic() - started, 1)
    print(
        json.dumps({"pooler": name, "clients": args.clients, **counts, "seconds": took}),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--hiccup", type=float, default=6)
    parser.add_argument("--idle", type=float, default=3)
    parser.add_argument("--frontends", default="uvloop", help="comma-separated")
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    raise_fd_limit(args.clients * 4 + 1000)
    pg = conftest._test_cluster(15)
    try:
        with tempfile.TemporaryDirectory() as work:
            frontends = args.frontends.split(",")
            runs: list[tuple[str, str, dict[str, object]]] = [
                (f"pgsansio {fe}", fe, {}) for fe in frontends
            ]
            control = f"pgsansio {frontends[0]}, PgCat's keepalives on client sockets"
            runs.append((control, frontends[0], dict(OLD_CLIENT_SETTINGS)))
            for name, frontend, general in runs:
                with pgsansio(pg, pathlib.Path(work), frontend=frontend, general=general) as d:
                    report(name, d.port, args)
            with pgbouncer(pg) as d:
                report("PgBouncer 1.18", d.port, args)
    finally:
        pg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
