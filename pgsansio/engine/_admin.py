"""The admin console: the virtual databases ``pgbouncer`` and ``pgcat``.

The ``Admin`` part of the engine. Log in as ``admin_username`` with
``admin_password`` (``admin_auth_type`` md5, scram-sha-256 or trust) to either
database. What a PgBouncer operator expects, written down:

- **Simple query protocol only.** A Parse/Bind/Describe/Execute gets one 0A000 error
  per batch and the session goes on at the Sync (PgBouncer closes the connection;
  keeping it is kinder to a driver that tries the extended protocol first).
- **One command per query**, case-insensitive, an optional trailing ``;``; names may be
  double-quoted. ``SELECT x`` means ``SHOW x``. ``SET ...`` is accepted and ignored
  (answers ``SET``) so that drivers' session setup works.
- **Columns** are PgBouncer 1.25's, in its order, for every command PgBouncer has (so
  exporters reading them by name work); ``SHOW BANS`` has PgCat's. Counters are int8,
  statistics numeric (as PgBouncer since 1.12), everything else text.
- The engine has no wall clock (time comes in as monotonic seconds), so
  ``connect_time``/``request_time`` say how long ago, e.g. ``12.500 s ago``, and
  ``ptr``/``link`` are ``c<id>``/``s<id>`` rather than memory addresses.
- **SHOW DATABASES** has one row per server address: ``name`` is the pool name when the
  pool has a single address, else ``<pool>_shard_<n>_<role>[_<i>]`` as in PgCat.
- **SHUTDOWN** with no argument is PgBouncer's on ``pgbouncer`` (no row, exit at
  once) and PgCat's on ``pgcat``: one row ``success`` = ``t``, then the graceful drain
  of SIGINT (in-flight transactions may finish).
- **Several workers** (``general.workers``; see ._peers): a console connection lands
  on one worker, which speaks for all. ``SHOW`` answers one row per worker row, with a
  ``worker`` column added at the end (1..N): exact, where sums of averages and of
  per-worker limits would not be, and it shows how evenly the kernel spread the
  clients. The commands that change the pooler (PAUSE, RESUME, DISABLE, ENABLE,
  RECONNECT, KILL, WAIT_CLOSE, BAN, UNBAN, RELOAD, SET, SHUTDOWN) run here and are
  passed to every other worker, and a worker that fails or does not answer is named
  in the log. PAUSE and WAIT_CLOSE answer when every worker has: the others first
  (together), then this one. The plain SHUTDOWN (exit at once) waits for the others'
  answers before this worker exits. KILL_CLIENT takes an id of this worker's (ids
  are per worker: SHOW CLIENTS's worker column says whose). SHOW HELP and VERSION are
  this worker's alone.
- **Errors** name the command and what is wrong: 42601 for syntax (unknown command,
  missing or extra argument), 42704 for an unknown database, client or host, 55000
  for a state that does not allow it (RESUME of what is not paused).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgsansio.protocol import (
    Bind,
    Close,
    CommandComplete,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Event,
    Execute,
    Flush,
    MalformedMessage,
    Parse,
    Query,
    ReadyForQuery,
    Span,
    Sync,
    Terminate,
)

from ._control import AdminError, Control
from ._errors import fatal
from ._login import UNIX_OWNER_PEER
from ._metrics import SAMPLES_ITEM
from ._objects import (
    Client,
)
from ._peers import PEER_APPLICATION
from ._settings import SET_STATEMENT, apply_set
from ._show import INT4, TEXT, Show
from ._states import C_CLOSED, ClientState

if TYPE_CHECKING:
    from pgsansio.config.model import Config

    from ._context import Context
    from ._control import Control
    from ._health import Health
    from ._leaving import Leaving
    from ._lending import Lending
    from ._metrics import Metrics
    from ._peers import Answer, Peers
    from ._pooling import Pools
    from ._show import Columns, Row, Show

__all__ = ["Admin"]

_RELAYED = frozenset(
    (
        "PAUSE",
        "RESUME",
        "DISABLE",
        "ENABLE",
        "RECONNECT",
        "KILL",
        "WAIT_CLOSE",
        "BAN",
        "UNBAN",
        "RELOAD",
        "SET",
        "SHUTDOWN",
    )
)
"""Console commands every worker runs (see the module docstring)."""

_WAIT_FOR_ALL = frozenset(("PAUSE", "WAIT_CLOSE"))
"""Relayed commands answered only once every worker has done them (PgBouncer answers
PAUSE when the servers are closed: so an operator may then restart PostgreSQL)."""

_LOCAL_ITEMS = frozenset(("HELP", "VERSION"))
"""SHOW items the worker the console is connected to answers alone."""

_EXTENDED = (Parse, Bind, Describe, Execute, Close, MalformedMessage)
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,"]+)')


class Admin:
    """Owns the console sessions' parsing; the commands act through the parts below."""

    def __init__(
        self,
        ctx: Context,
        *,
        pools: Pools,
        health: Health,
        lending: Lending,
        leaving: Leaving,
        show: Show,
        control: Control,
        peers: Peers,
        metrics: Metrics,
        reconfigure: Callable[[Config], None],
    ) -> None:
        self.ctx = ctx
        self.peers = peers
        self.metrics = metrics
        self._reconfigure = reconfigure  # the one call upward: SET applies like RELOAD
        self._raw_sql = ""  # the command being run, as typed (SET needs its quotes)
        self.pools = pools
        self.health = health
        self.lending = lending
        self.leaving = leaving
        self.show = show
        self.control = control

    # === login =======================================================================

    # === requests ====================================================================

    def admin_span(self, c: Client, span: Span) -> None:
        self._admin_events(c, list(span.events))

    def _admin_events(self, c: Client, events: list[Event]) -> None:
        failed = False
        for i, e in enumerate(events):
            if c.state is ClientState.CLOSED:
                return
            if c.cid in self.control.busy:
                # A PAUSE or RELOAD is still running: the rest waits for its answer.
                c.pending.append((b"", events[i:], []))
                return
            t = type(e)
            if t is Query:
                assert isinstance(e, Query)
                self._admin_query(c, e.sql)
            elif t is Sync:
                failed = False
                self.ctx.send_client(c, ReadyForQuery("I"))
            elif t is Terminate:
                self.leaving.drop_client(c)
                return
            elif t is Flush:
                continue
            elif t in _EXTENDED:
                if not failed:
                    failed = True
                    self.ctx.send_client(
                        c,
                        ErrorResponse.build(
                            "0A000",
                            "the admin console accepts only simple queries: the extended "
                            "query protocol (Parse/Bind/Execute) is not supported",
                        ),
                    )
            else:
                self.ctx.send_client(
                    c,
                    ErrorResponse.build(
                        "0A000", f"the admin console does not support {t.__name__} messages"
                    ),
                )
                self.ctx.send_client(c, ReadyForQuery("I"))

    def admin_resume(self, c: Client) -> None:
        pending, c.pending = c.pending, []
        for _, events, _ in pending:
            self._admin_events(c, events)

    def _admin_query(self, c: Client, sql: str) -> None:
        text = sql.strip()
        while text.endswith(";"):
            text = text[:-1].rstrip()
        if not text:
            self.ctx.send_client(c, EmptyQueryResponse())
            self.ctx.send_client(c, ReadyForQuery("I"))
            return
        try:
            words = [
                (m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
                for m in _TOKEN.finditer(text)
            ]
            if any(";" in w for w in words):
                raise AdminError("42601", "the admin console runs one command per query")
            self._raw_sql = text
            tag = self._admin_command(c, words)
        except AdminError as exc:
            self.ctx.send_client(c, ErrorResponse.build(exc.sqlstate, exc.message))
            self.ctx.send_client(c, ReadyForQuery("I"))
            return
        if tag is None:
            return  # answered later (PAUSE, RELOAD) or the client is gone
        if c.state is not C_CLOSED:
            self.ctx.send_client(c, CommandComplete(tag))
            self.ctx.send_client(c, ReadyForQuery("I"))

    def _admin_command(self, c: Client, words: list[str]) -> str | None:
        """Run one command; the tag to answer with, or None if answered elsewhere."""
        if not words:
            raise AdminError("42601", "no command found; SHOW HELP lists the commands")
        command = words[0].upper()
        args = words[1:]
        if command in ("SHOW", "SELECT"):
            if len(args) != 1:
                raise AdminError(
                    "42601", f"{command} takes one item, e.g. {command} POOLS (SHOW HELP)"
                )
            item = args[0].upper()
            if item == "FDS" and c.stats_only:
                raise AdminError("42501", "admin access needed")
            if item == SAMPLES_ITEM and self.peers.others and not self._everywhere(c):
                # Another worker being scraped asks for this one's samples (._metrics).
                columns = (("family", TEXT), ("type", TEXT), ("help", TEXT), ("line", TEXT))
                self.show.rows(c, columns, self.metrics.samples())
                return None
            everywhere = self._everywhere(c)
            if everywhere and item not in _LOCAL_ITEMS and self._show_everywhere(c, item):
                return None
            self.show.hidden = None if everywhere or not self.peers.others else c.cid
            try:
                known = self.show.run(item, c)
            finally:
                self.show.hidden = None
            if not known:
                raise AdminError(
                    "42704", f'unknown {command} item "{args[0]}"; SHOW HELP lists them'
                )
            return None
        if command == "SET":
            before = self.ctx.config
            tag = self._set(c)
            if self.ctx.config is not before and self._everywhere(c):
                self._relay()  # a setting changed (a driver's session SET changes none)
            return tag
        if c.stats_only:
            # PgBouncer's stats_users: read, never act (its words).
            raise AdminError("42501", "admin access needed")
        if command == "SHUTDOWN" and args == [] and c.database != "pgcat":
            if self._everywhere(c):
                # Exit once the others have heard it: after, nothing would reach them.
                self.control.busy.add(c.cid)
                self.peers.ask(self._raw_sql, lambda _: self._shutdown_now(c))
                return None
        elif command == "SHUTDOWN" and self._everywhere(c):
            self._relay()  # before: when no client is left, its Exit ends this batch
        if command == "SHUTDOWN":
            mode = " ".join(args).upper()
            if mode == "" and c.database == "pgcat":
                # PgCat: one row "t", then the drain SIGINT starts (its SHUTDOWN sends
                # itself SIGINT); in-flight transactions may finish.
                self.show.rows(c, (("success", TEXT),), [("t",)], "SHUTDOWN")
                self.control.begin_shutdown(wait_for_clients=False)
                return None
            if mode == "":
                self._shutdown_now(c)
                return None
            if mode not in ("WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"):
                raise AdminError(
                    "42601",
                    f'SHUTDOWN takes nothing, WAIT_FOR_SERVERS or WAIT_FOR_CLIENTS, not "{mode}"',
                )
            self.ctx.send_client(c, CommandComplete("SHUTDOWN"))
            self.ctx.send_client(c, ReadyForQuery("I"))
            self.control.begin_shutdown(wait_for_clients=mode == "WAIT_FOR_CLIENTS")
            return None
        action = _ACTIONS.get(command)
        if action is None:
            raise AdminError(
                "42601", f'invalid command "{words[0]}"; SHOW HELP lists the commands'
            )
        if command in _WAIT_FOR_ALL and self._everywhere(c):
            # Answered when every worker is done: the others first (in parallel), then
            # here, whose answer (when its own servers are closed) is the console's.
            self._one_db(command, args, required=False)  # a bad name fails here, alone
            self.control.busy.add(c.cid)
            self.peers.ask(self._raw_sql, lambda _: self._then_here(c, command, args))
            return None
        answer = action(self, c, command, args)
        if command in _RELAYED and self._everywhere(c):
            self._relay()  # it ran here (an error would have been raised): now there
        return answer

    # === a pooler of several workers (see the module docstring and ._peers) =========

    def _everywhere(self, c: Client) -> bool:
        """Whether ``c``'s commands speak for every worker: there are others, and ``c``
        is not another worker asking this one."""
        if not self.peers.others:
            return False
        name = c.params.get("application_name", "")
        return not (c.peer == UNIX_OWNER_PEER and name.startswith(PEER_APPLICATION))

    def _show_everywhere(self, c: Client, item: str) -> bool:
        """Answer ``SHOW item`` with every worker's rows once they are in; False for an
        item this worker does not know (then nobody is asked)."""
        local = self.show.table(item, c)
        if local is None:
            return False
        index = self.peers.worker.index if self.peers.worker is not None else 1
        self.control.busy.add(c.cid)
        self.peers.ask(f"SHOW {item}", lambda answers: self._show_merged(c, local, index, answers))
        return True

    def _show_merged(
        self,
        c: Client,
        local: tuple[Columns, list[Row], str],
        index: int,
        answers: dict[int, Answer],
    ) -> None:
        columns, rows, tag = local
        merged: list[tuple[int, Row]] = [(index, row) for row in rows]
        for k, answer in answers.items():
            if answer.error is None and len(answer.columns) == len(columns):
                merged.extend((k, row) for row in answer.rows)
        merged.sort(key=lambda pair: pair[0])  # stable: each worker's order is kept
        self._answered_later(c)
        if c.state is not C_CLOSED:
            self.show.rows(
                c,
                (*columns, ("worker", INT4)),
                [(*row, k) for k, row in merged],
                tag,
            )
        self.admin_resume(c)

    def _then_here(self, c: Client, command: str, args: list[str]) -> None:
        """Run ``command`` here once the other workers have (see _WAIT_FOR_ALL)."""
        self._answered_later(c)
        try:
            answer = _ACTIONS[command](self, c, command, args)
        except AdminError as exc:
            if c.state is not C_CLOSED:
                self.ctx.send_client(c, ErrorResponse.build(exc.sqlstate, exc.message))
                self.ctx.send_client(c, ReadyForQuery("I"))
            self.admin_resume(c)
            return
        if answer is not None and c.state is not C_CLOSED:
            self.ctx.send_client(c, CommandComplete(answer))
            self.ctx.send_client(c, ReadyForQuery("I"))
        if c.cid not in self.control.busy:
            self.admin_resume(c)

    def _relay(self) -> None:
        """Run the command being run here on every other worker too."""
        self.peers.ask(self._raw_sql, lambda _: None)  # failures: logged by Peers

    def _shutdown_now(self, c: Client) -> None:
        """PgBouncer's plain SHUTDOWN: answer, then exit at once."""
        self._answered_later(c)
        if c.state is not C_CLOSED:
            self.ctx.send_client(c, CommandComplete("SHUTDOWN"))
            self.ctx.send_client(c, ReadyForQuery("I"))
        self.control.shutdown_now()

    def _answered_later(self, c: Client) -> None:
        self.control.busy.discard(c.cid)

    # === commands that act ===========================================================

    def _set(self, c: Client) -> str:
        m = SET_STATEMENT.match(self._raw_sql)
        if m is None:
            return "SET"  # a driver's session setup: accepted and ignored
        value = m[2].replace("''", "'") if m[2] is not None else m[3]
        new = apply_set(self.ctx.config, m[1], value)
        if new is None:
            return "SET"
        if c.stats_only:
            raise AdminError("42501", "admin access needed")
        self.ctx.log(logging.INFO, f"SET {m[1].lower()} = {value!r} from the admin console")
        self._reconfigure(new)
        return "SET"

    def _one_db(self, command: str, args: list[str], *, required: bool) -> str | None:
        if len(args) > 1:
            raise AdminError("42601", f"{command} takes one database name, got {len(args)}")
        if not args:
            if required:
                raise AdminError("42601", f"{command} needs a database name: {command} <db>")
            return None
        self.control.check_db(args[0])
        return args[0]

    def _cmd_pause(self, c: Client, command: str, args: list[str]) -> str | None:
        db = self._one_db(command, args, required=False)
        self.control.busy.add(c.cid)
        self.control.pause(db, c)
        return None

    def _cmd_resume(self, c: Client, command: str, args: list[str]) -> str | None:
        db = self._one_db(command, args, required=False)
        if db is None and not self.ctx.life.paused:
            raise AdminError("55000", "RESUME: the pooler is not paused")
        if db is not None and db not in self.ctx.life.paused:
            raise AdminError("55000", f'RESUME: database "{db}" is not paused')
        if self.ctx.life.shutting_down:
            raise AdminError("55000", "RESUME: the pooler is shutting down")
        self.control.resume(db)
        self.ctx.log(logging.INFO, f"RESUME {db or '(every database)'}: serving queries again")
        return "RESUME"

    def _cmd_disable(self, c: Client, command: str, args: list[str]) -> str | None:
        db = self._one_db(command, args, required=True)
        assert db is not None
        if command == "DISABLE":
            self.ctx.life.disabled.add(db)
        else:
            self.ctx.life.disabled.discard(db)
        self.ctx.log(logging.INFO, f'{command} "{db}": new logins are {command.lower()}d')
        return command

    def _cmd_reconnect(self, c: Client, command: str, args: list[str]) -> str | None:
        self.control.reconnect(self._one_db(command, args, required=False))
        return "RECONNECT"

    def _cmd_wait_close(self, c: Client, command: str, args: list[str]) -> str | None:
        db = self._one_db(command, args, required=False)
        self.control.busy.add(c.cid)
        self.control.wait_close(db, c)
        return None

    def _cmd_kill(self, c: Client, command: str, args: list[str]) -> str | None:
        db = self._one_db(command, args, required=False)
        self.ctx.log(logging.WARNING, f"KILL {db or '(every database)'} from the admin console")
        self.control.kill(db)
        return "KILL"

    def _cmd_kill_client(self, c: Client, command: str, args: list[str]) -> str | None:
        if len(args) != 1 or not args[0].isdigit():
            raise AdminError("42601", "KILL_CLIENT needs one client id (SHOW CLIENTS, column id)")
        cid = int(args[0])
        if cid == c.cid:
            self.leaving.drop_client(c, fatal("57P01", "terminated by KILL_CLIENT"))
            return None
        self.control.kill_client(cid)
        return "KILL_CLIENT"

    def _cmd_ban(self, c: Client, command: str, args: list[str]) -> str | None:
        if command == "BAN" and (len(args) != 2 or not _is_number(args[1])):
            raise AdminError("42601", "BAN needs a host and a number of seconds: BAN host 60")
        if command == "UNBAN" and len(args) != 1:
            raise AdminError("42601", "UNBAN needs a host: UNBAN host (or host:port)")
        addresses = self.control.addresses(args[0])
        if not addresses:
            raise AdminError("42704", f'{command}: no configured server at "{args[0]}"')
        if command == "BAN":
            seconds = float(args[1])
            if seconds <= 0:
                raise AdminError("22023", "BAN: the number of seconds must be positive")
            primaries = [a for a in addresses if self.health.role(a) == "primary"]
            if primaries:
                raise AdminError(
                    "55000",
                    f"BAN: {primaries[0].host}:{primaries[0].port} is a primary; "
                    "primaries are never banned",
                )
            for a in addresses:
                self.lending.ban(a, seconds, "admin ban")
        else:
            for a in addresses:
                self.health.unban((a.host, a.port))
        self.show.rows(
            c,
            (("db", TEXT), ("user", TEXT), ("role", TEXT), ("host", TEXT)),
            [
                (
                    g.name,
                    g.user.username,
                    self.health.role(p.address) or "unknown",
                    f"{p.address.host}:{p.address.port}",
                )
                for g in self.pools.groups.values()
                for p in g.all_pools()
                if p.address in addresses
            ],
            command,
        )
        return None

    def _cmd_reload(self, c: Client, command: str, args: list[str]) -> str | None:
        if args:
            raise AdminError("42601", "RELOAD takes no argument")
        self.control.reload(c)
        return None


# Built after the class, not in its body: a class compiled with mypyc cannot name its
# own methods while it is being built (docs/compiled.md).
_ACTIONS: dict[str, Callable[[Admin, Client, str, list[str]], str | None]] = {
    "PAUSE": Admin._cmd_pause,
    "RESUME": Admin._cmd_resume,
    "DISABLE": Admin._cmd_disable,
    "ENABLE": Admin._cmd_disable,
    "RECONNECT": Admin._cmd_reconnect,
    "WAIT_CLOSE": Admin._cmd_wait_close,
    "KILL": Admin._cmd_kill,
    "KILL_CLIENT": Admin._cmd_kill_client,
    "BAN": Admin._cmd_ban,
    "UNBAN": Admin._cmd_ban,
    "RELOAD": Admin._cmd_reload,
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
