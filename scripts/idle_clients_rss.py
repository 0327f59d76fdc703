r"""What an idle client costs the pooler in memory, per frontend: RSS growth / clients.

Starts ``python -m pgsansio run`` (as an operator does) from each tree given, on each
frontend, opens ``--clients`` TCP connections that send nothing (so each is a client the
engine knows, waiting for its startup packet), waits for the pooler's RSS to settle,
and prints (RSS with the clients - RSS before) / clients in KiB. The pool points at a
closed port: no server is ever needed. Compare trees in one run (``--tree`` twice):
the figure depends on the Python build and the allocator, not only on the code.

Usage::

    .venv/bin/python scripts/idle_clients_rss.py --tree . --tree /path/to/baseline \
        --frontends trio,curio,uvloop --clients 2000
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """\
[general]
host = "127.0.0.1"
port = {port}
admin_username = "admin"
admin_password = "admin"

[pools.db]
pool_mode = "transaction"

[pools.db.users.0]
username = "u"
password = "p"
pool_size = 2

[pools.db.shards.0]
database = "db"
servers = [["127.0.0.1", {closed}, "primary"]]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int) -> int:
    """RSS once two readings 0.5 s apart agree within 64 KiB (at most 10 s)."""
    last = rss_kib(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) <= 64:
            return now
        last = now
    return last


def measure(tree: pathlib.Path, frontend: str, clients: int, work: pathlib.Path) -> float:
    port = free_port()
    toml = work / f"{frontend}.toml"
    toml.write_text(CONFIG.format(port=port, closed=free_port()))
    cmd = [sys.executable, "-m", "pgsansio", "run", str(toml), "--frontend", frontend]
    cmd += ["--log-level", "warning"]
    # -m puts the working directory first on sys.path: the tree's own package.
    proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"pgsansio --frontend {frontend} did not start") from None
                time.sleep(0.1)
        # One warm-up round so that the first client's one-off costs (imports, caches)
        # are not counted.
        warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        time.sleep(1)
        for s in warm:
            s.close()
        before = settled_rss(proc.pid)
        for _ in range(clients):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        after = settled_rss(proc.pid)
        return (after - before) / clients
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=pathlib.Path, required=True)
    parser.add_argument("--frontends", default="trio,curio,uvloop")
    parser.add_argument("--clients", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idle-rss-") as tmp:
        for frontend in args.frontends.split(","):
            for tree in args.tree:
                kib = measure(tree.resolve(), frontend, args.clients, pathlib.Path(tmp))
                print(f"{frontend:8} {tree}: {kib:.1f} KiB per idle client", flush=True)


if __name__ == "__main__":
    main()
