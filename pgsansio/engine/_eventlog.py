"""The log lines an operator reads when something goes wrong, and a bound on them.

Decisions:

- **Wording** follows PgBouncer's, so that its operators (and their log searches) find
  their way: a connection is tagged ``C-<id>: <database>/<user>@<address>`` (a client)
  or ``S-<id>: <database>/<user>@<host>:<port>`` (a server); a login is ``login attempt:
  db=... user=... tls=...``; a connection that ends says ``closing because: <reason>
  (age=<seconds>s)``. PgBouncer's tags carry a pointer; ours carry the engine's id, which
  is also what ``SHOW CLIENTS`` / ``SHOW SERVERS`` call the connection.
- **What is logged at the default level** (INFO): each login (``log_connections``),
  each logged-in client leaving (``log_disconnections``), and as warnings
  (``log_pooler_errors``) each failed client login with its real cause, each server
  connection that could not be opened or logged in, and each server that does not
  speak the protocol. PgCat's ``log_client_connections`` / ``log_client_disconnections``
  turn the first two on as well. No line holds a password or any other secret: a
  failed login says *why* ("wrong password", "no such database"), never what was sent.
- **A budget per kind of line**: at most :data:`BUDGET` lines of one kind per
  :data:`WINDOW` seconds; beyond that, lines of that kind are counted, and one line at
  the end of the window says how many were suppressed. A flood of failed logins (or a
  server down under a pgbench -C storm) costs a few hundred lines a minute, not the
  disk. The budget is the engine's state and runs on the engine's ``now``: no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._objects import Client, ServerConn

__all__ = [
    "BUDGET",
    "DISCONNECT",
    "LOGIN",
    "LOGIN_FAILED",
    "SERVER_FAILED",
    "WINDOW",
    "LogBudget",
    "age",
    "client_tag",
    "server_tag",
]

BUDGET = 100
"""Lines of one kind logged per window; the rest are counted."""
WINDOW = 60.0
"""Seconds a budget lasts."""

# The kinds (each has its own budget).
LOGIN = "login"
DISCONNECT = "disconnection"
LOGIN_FAILED = "failed login"
SERVER_FAILED = "server connection failure"


def client_tag(c: Client) -> str:
    return f"C-{c.cid}: {c.database or '(nodb)'}/{c.username or '(nouser)'}@{c.peer}"


def server_tag(s: ServerConn) -> str:
    group = s.group
    who = f"{group.name}/{group.user.username}" if group is not None else "(probe)"
    return f"S-{s.sid}: {who}@{s.address.host}:{s.address.port}"


def age(since: float, now: float) -> str:
    return f"(age={max(0, int(now - since))}s)"


class LogBudget:
    """Per kind: the window's end, lines logged in it, lines suppressed in it."""

    __slots__ = ("_kinds",)

    def __init__(self) -> None:
        # Bounded: the kinds are the few constants above.
        self._kinds: dict[str, list[float]] = {}

    def admit(
        self,
        kind: str,
        now: float,
        log: Callable[[int, str], None],
        at: Callable[[float, Callable[[], None]], None],
    ) -> bool:
        """True if a line of ``kind`` may be logged now; else it is counted.

        The first line suppressed in a window arms a timer (``at``) at the window's end
        that logs how many were (``log``).
        """
        state = self._kinds.get(kind)
        if state is None or now >= state[0]:
            state = self._kinds[kind] = [now + WINDOW, 0, 0]
        if state[1] < BUDGET:
            state[1] += 1
            return True
        if not state[2]:
            at(state[0], lambda: _summary(kind, state, log))
        state[2] += 1
        return False


def _summary(kind: str, state: list[float], log: Callable[[int, str], None]) -> None:
    log(
        logging.WARNING,
        f"suppressed {int(state[2])} {kind} message(s) in the last {WINDOW:g} s (at most "
        f"{BUDGET} of each kind are logged per {WINDOW:g} s)",
    )
