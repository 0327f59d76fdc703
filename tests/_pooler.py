"""Run the pooler in-process (a background thread with its own loop) for tests."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from pgsansio.config_model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.engine import Engine
from pgsansio.frontends.asyncio import AsyncioFrontend
from pgsansio.testing.cluster import TEST_DATABASE, TEST_USERS, Cluster


def make_config(
    cluster: Cluster,
    *,
    pool_mode: str = "transaction",
    pool_size: int = 3,
    auth_type: str = "md5",
    database: str = TEST_DATABASE,
    pool_name: str | None = None,
    replicas: tuple[Cluster, ...] = (),
    general: dict[str, object] | None = None,
    pool: dict[str, object] | None = None,
    user: dict[str, object] | None = None,
    users: tuple[str, ...] = ("scram_user", "md5_user", "password_user", "trust_user"),
) -> Config:
    """A config with the cluster's test users in one pool named after the database."""
    user_cfgs = {}
    for name in users:
        password = TEST_USERS[name][1] if name in TEST_USERS else None
        u = UserConfig(
            username=name,
            password=password or None,
            pool_size=pool_size,
            auth_type=auth_type if password else "trust",
            pool_mode=pool_mode,
        )
        if user:
            u = replace(u, **user)  # type: ignore[arg-type]
        user_cfgs[name] = u
    servers = (
        ServerAddress("127.0.0.1", cluster.port, "primary"),
        *tuple(ServerAddress("127.0.0.1", r.port, "replica") for r in replicas),
    )
    p = PoolConfig(
        name=pool_name or database,
        users=user_cfgs,
        shards=(ShardConfig(0, database, servers),),
        pool_mode=pool_mode,
    )
    if pool:
        p = replace(p, **pool)  # type: ignore[arg-type]
    g = General(host="127.0.0.1", port=0, admin_username="admin", admin_password="admin")
    if general:
        g = replace(g, **general)  # type: ignore[arg-type]
    return Config(general=g, pools={p.name: p})


class Pooler:
    """The asyncio frontend and a real engine on a thread; ``port`` once started."""

    def __init__(
        self, config: Config, *, use_uvloop: bool = False, config_path: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path  # what SIGHUP / RELOAD re-read
        self.use_uvloop = use_uvloop
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code: int | None = None
        self.frontend: AsyncioFrontend | None = None
        self.engine: Engine | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> int:
            self.loop = asyncio.get_running_loop()
            self.engine = Engine(self.config, seed=1)
            self.frontend = AsyncioFrontend(self.engine, self.config, config_path=self.config_path)

            def ready(addr: tuple[str, int]) -> None:
                self.port = addr[1]
                self._ready.set()

            return await self.frontend.serve(ready, handle_signals=False)

        if self.use_uvloop:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                self.exit_code = runner.run(main())
        else:
            self.exit_code = asyncio.run(main())
        self._ready.set()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("the pooler did not start")

    def on_loop(self, fn: Callable[[], object]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = 15) -> None:
        if self.loop is not None and self._thread.is_alive() and self.frontend is not None:
            fe = self.frontend
            self.on_loop(lambda: fe.shutdown(signal.SIGINT))
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.on_loop(lambda: fe.shutdown(signal.SIGINT))
                self._thread.join(5)

    def wait(self, timeout: float) -> int | None:
        self._thread.join(timeout)
        return self.exit_code

    def dsn(self, user: str, password: str | None = None, dbname: str = TEST_DATABASE) -> str:
        pw = password if password is not None else (TEST_USERS.get(user, ("", ""))[1] or "")
        return f"host=127.0.0.1 port={self.port} user={user} password='{pw}' dbname={dbname}"


@contextmanager
def running(
    config: Config, *, use_uvloop: bool = False, config_path: str | None = None
) -> Iterator[Pooler]:
    p = Pooler(config, use_uvloop=use_uvloop, config_path=config_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()
