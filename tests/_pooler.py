"""Run the pooler in-process (a background thread with its own loop) for tests.

Integration test modules run every test against every frontend by using the
``pooler_frontend`` fixture (``pytestmark = pytest.mark.usefixtures("pooler_frontend")``);
:func:`running` then starts the frontend that fixture chose.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from _frontend_thread import FrontendThread

from pgsansio.config.model import (
    Config,
    General,
    PoolConfig,
    ServerAddress,
    ShardConfig,
    UserConfig,
)
from pgsansio.engine import Engine
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


FRONTEND: ContextVar[str] = ContextVar("FRONTEND", default="asyncio")
"""The frontend :func:`running` uses when not told; the ``pooler_frontend`` fixture sets it."""


class Pooler:
    """A real engine behind one frontend on a thread; ``port`` once started.

    ``frontend`` is one of :data:`FRONTEND_NAMES`; by default the one the test's
    ``pooler_frontend`` fixture chose (asyncio for a test that does not use it).
    ``config_path`` is the file SIGHUP and the console's RELOAD re-read.
    """

    def __init__(
        self,
        config: Config,
        *,
        use_uvloop: bool = False,
        frontend: str | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.frontend_name = frontend or ("uvloop" if use_uvloop else FRONTEND.get())
        self.port = 0
        self.engine = Engine(config, seed=1)
        self._thread = FrontendThread(
            self.frontend_name, self.engine, config, config_path=config_path
        )

    @property
    def frontend(self) -> Any:
        return self._thread.frontend

    @property
    def exit_code(self) -> int | None:
        return self._thread.exit_code

    def start(self) -> None:
        self._thread.start()
        self.port = self._thread.address[1]

    def signal(self, signum: int) -> None:
        """What the operator's signal does (SIGINT, SIGTERM, SIGHUP, SIGUSR1/2)."""
        self._thread.signal(signum)

    def stop(self, timeout: float = 15) -> None:
        if self._thread.is_alive() and self.frontend is not None:
            self.signal(signal.SIGINT)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.signal(signal.SIGINT)
                self._thread.join(5)

    def wait(self, timeout: float) -> int | None:
        return self._thread.join(timeout)

    def dsn(self, user: str, password: str | None = None, dbname: str = TEST_DATABASE) -> str:
        pw = password if password is not None else (TEST_USERS.get(user, ("", ""))[1] or "")
        return f"host=127.0.0.1 port={self.port} user={user} password='{pw}' dbname={dbname}"


@contextmanager
def running(
    config: Config,
    *,
    use_uvloop: bool = False,
    frontend: str | None = None,
    config_path: str | None = None,
) -> Iterator[Pooler]:
    """The pooler serving ``config`` for the block (see :class:`Pooler` for ``frontend``)."""
    p = Pooler(config, use_uvloop=use_uvloop, frontend=frontend, config_path=config_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()
