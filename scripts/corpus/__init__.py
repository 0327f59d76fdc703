"""The framework for recording the traffic corpus (``scripts/make_corpus.py``).

A *scenario* is a small function that makes a real client (psql, pgbench, a driver, or
hand-written bytes on a raw socket) talk to a throwaway PostgreSQL server through a
recording relay. ``make_corpus.py`` gives it an :class:`Env` that says where the relay
listens and how to reach the server behind it for setup, runs it, and stores what the
relay recorded under ``tests/corpus/<scenario id>/``.

Scenario modules are ``scripts/corpus/scenarios_*.py``; each registers its functions
with the :func:`scenario` decorator::

    from . import Env, scenario

    @scenario("psql-trust-ssl-refused", client="psql", description="...")
    def psql_trust(env: Env) -> None:
        env.run(["psql", "-X", "-c", "select 1"])

Rules for a scenario, so that re-recording gives reviewable diffs:

* do a fixed amount of deterministic work and finish by itself within seconds (no
  random data, no unbounded waits: every socket and subprocess has a timeout);
* connect every recorded client to ``env.host:env.port`` (the relay); do setup and
  teardown (creating tables, granting, resetting settings) directly on the server with
  ``env.server.execute(...)``, which is not recorded;
* close every connection it opened before returning (the relay waits for them) and
  leave the server as it found it, because the next scenario shares it;
* raise an exception when the client did not do what the scenario is about, so a
  broken recording fails loudly instead of landing in the corpus.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pgsansio.testing.cluster import Cluster

__all__ = ["SCENARIOS", "Env", "Scenario", "scenario"]

F = TypeVar("F", bound=Callable[..., None])

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
_AUTHS = ("trust", "password", "md5", "scram", "none")
_PROTOCOLS = ("3.0", "3.2", "3.3")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A registered scenario: the function plus what ``meta.json`` says about it."""

    id: str
    fn: Callable[[Env], None]
    client: str
    """The client program or library ("psql", "psycopg", "raw", ...); make_corpus adds
    the version it finds."""
    description: str
    """What the traces cover, for the corpus README and for reviewers."""
    auth: str = "trust"
    server: int = 15
    """PostgreSQL major version of the server to record against."""
    protocol: str = "3.0"
    tls: bool = False
    """True: recorded against a server with ssl=on (the trace holds a TLS handshake)."""
    connections: int | None = None
    """Expected number of recorded connections; make_corpus fails the scenario if the
    relay saw a different number. None: whatever the client opened."""
    module: str = ""


SCENARIOS: dict[str, Scenario] = {}
"""Every registered scenario by id, in registration order."""


def scenario(
    id: str,
    *,
    client: str,
    description: str,
    auth: str = "trust",
    server: int = 15,
    protocol: str = "3.0",
    tls: bool = False,
    connections: int | None = None,
) -> Callable[[F], F]:
    """Register ``fn(env: Env) -> None`` as scenario ``id`` (e.g. "psql-trust-ssl-refused").

    The id names the corpus directory, so it is checked here: lowercase letters,
    digits, dots and dashes. A function may carry several ``@scenario`` decorators to
    record the same steps in several configurations (another server version, say).
    """
    if not _ID_RE.match(id):
        raise ValueError(f"scenario id {id!r}: use lowercase letters, digits, '.' and '-'")
    if auth not in _AUTHS:
        raise ValueError(f"scenario {id}: auth must be one of {_AUTHS}, not {auth!r}")
    if protocol not in _PROTOCOLS:
        raise ValueError(f"scenario {id}: protocol must be one of {_PROTOCOLS}")
    if server not in (15, 18):
        raise ValueError(f"scenario {id}: server must be 15 or 18, not {server!r}")
    if not description.strip():
        raise ValueError(f"scenario {id}: a description is required")

    def register(fn: F) -> F:
        if id in SCENARIOS:
            other = SCENARIOS[id]
            raise ValueError(f"scenario id {id!r} registered twice ({other.module} and here)")
        SCENARIOS[id] = Scenario(
            id=id,
            fn=fn,
            client=client,
            description=" ".join(description.split()),
            auth=auth,
            server=server,
            protocol=protocol,
            tls=tls,
            connections=connections,
            module=getattr(fn, "__module__", ""),
        )
        return fn

    return register


def _conninfo_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclasses.dataclass
class Env:
    """What a scenario gets: where to connect, and the server behind the relay."""

    host: str
    """The recording relay, in front of the server: recorded clients connect here."""
    port: int
    server: Cluster
    """Direct access for setup and teardown (``server.execute(sql, dbname=...)``,
    ``server.port``); nothing done through it is recorded."""
    users: dict[str, str | None]
    """Role name -> password: trust_user (None), password_user, md5_user, scram_user."""
    dbname: str
    """The database the test roles use ("pgsansio_test")."""
    pg_major: int
    """Major version of the server (15 or 18)."""
    tmp: pathlib.Path
    """A scratch directory of this scenario, deleted afterwards."""
    extra_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Merged into the scenario's meta.json after recording (e.g. an exact "client"
    version only the scenario knows); keys given here win."""

    def client_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment :meth:`run` gives a client.

        Inherited ``PG*`` variables are dropped so that the operator's own settings
        cannot change what is recorded; PGHOST/PGPORT point at the relay, PGDATABASE and
        PGUSER default to the test database and trust_user. The locale is fixed and
        psql's startup file and the password file are disabled, because both change the
        bytes a client sends. Nothing else (PGSSLMODE, PGPASSWORD, PGAPPNAME ...) is set
        unless the caller passes it in ``env``, which wins over everything here.
        """
        out = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        out.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGDATABASE=self.dbname,
            PGUSER="trust_user",
            PGPASSFILE=str(self.tmp / "no-pgpass"),
            PGCONNECT_TIMEOUT="10",
            PSQLRC=os.devnull,
            LC_ALL="C.UTF-8",
            LANG="C.UTF-8",
        )
        if env:
            out.update(env)
        return out

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a client program against the relay and return its result.

        The environment is :meth:`client_env` updated with ``env``. stdout and stderr are
        captured; with ``check`` a non-zero exit raises :class:`RuntimeError` carrying
        the program's stderr, so a failed recording says why.
        """
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=self.client_env(env),
            cwd=self.tmp,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            out = proc.stdout.decode("utf-8", "replace").strip()
            raise RuntimeError(
                f"{' '.join(argv)[:200]} exited with status {proc.returncode}: "
                + (err or out or "(no output)")[-2000:]
            )
        return proc

    def dsn(self, user: str = "trust_user", **extra: str) -> str:
        """A libpq conninfo string for the relay as ``user``.

        The user's password from :attr:`users` is included unless ``password`` is given
        in ``extra``; other ``extra`` keys (sslmode, application_name, options ...) are
        appended as they are.
        """
        parts: dict[str, str] = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "user": user,
        }
        password = self.users.get(user)
        if password is not None and "password" not in extra:
            parts["password"] = password
        parts.update(extra)
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())
