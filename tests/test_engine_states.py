"""The engine's client and server states as data (pgsansio/engine/_states.py).

The tables are driven with random inputs (every step follows the table or raises
StateError and changes nothing), checked for shape (CLOSED from everywhere, nothing
out of CLOSED, every state reachable), and the real engine is run through a login, a
query, a release and a close to see it only ever takes the table's transitions.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _build import pure_only
from hypothesis import given
from hypothesis import strategies as st
from test_engine import World, config, logged_in, rows

import pgsansio.engine as engine_pkg
from pgsansio.config.model import ServerAddress
from pgsansio.engine import _states
from pgsansio.engine._objects import Client, ServerConn
from pgsansio.engine._states import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientInput,
    ClientState,
    ServerInput,
    ServerState,
    StateError,
    client_to,
    server_to,
)


def holder(kind: str, state: Any) -> Any:
    """A real Client or ServerConn in ``state`` (the transition functions only touch
    ``state``, but a compiled engine checks the argument's class)."""
    if kind == "client":
        return Client(0, "test", 0.0, state)
    server = ServerConn(0, None, ServerAddress("pg", 5432, "primary"), 0.0)
    server.state = state
    return server


KINDS: dict[str, tuple[Any, Any, dict[Any, Any], Callable[[Any, Any], None], Any, Any]] = {
    "client": (
        ClientState,
        ClientInput,
        CLIENT_TRANSITIONS,
        client_to,
        ClientState.STARTUP,
        ClientState.CLOSED,
    ),
    "server": (
        ServerState,
        ServerInput,
        SERVER_TRANSITIONS,
        server_to,
        ServerState.CONNECTING,
        ServerState.CLOSED,
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
@given(data=st.data())
def test_random_inputs_follow_the_table_or_raise_and_change_nothing(
    kind: str, data: st.DataObject
) -> None:
    states, inputs, table, to, _, closed = KINDS[kind]
    thing = holder(kind, data.draw(st.sampled_from(list(states))))
    for what in data.draw(st.lists(st.sampled_from(list(inputs)), max_size=30)):
        before = thing.state
        expected = table.get((before, what))
        if expected is None:
            message = f"can't handle {what.name} in state {before.name}"
            with pytest.raises(StateError, match=message):
                to(thing, what)
            assert thing.state is before
        else:
            to(thing, what)
            assert thing.state is expected
        if before is closed:
            assert thing.state is closed  # nothing leaves CLOSED
    to(thing, inputs.CLOSED)  # whatever happened, closing works
    assert thing.state is closed


@pytest.mark.parametrize("kind", list(KINDS))
def test_closing_is_legal_from_every_state_and_closed_is_final(kind: str) -> None:
    states, inputs, table, _, _, closed = KINDS[kind]
    for state in states:
        assert table[state, inputs.CLOSED] is closed
    assert {n for (s, _), n in table.items() if s is closed} == {closed}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_state_is_reachable_from_the_first(kind: str) -> None:
    states, _, table, _, first, _ = KINDS[kind]
    seen, todo = {first}, [first]
    while todo:
        state = todo.pop()
        for (s, _), n in table.items():
            if s is state and n not in seen:
                seen.add(n)
                todo.append(n)
    assert seen == set(states)


def test_the_error_names_the_input_and_the_state() -> None:
    c = holder("client", ClientState.READY)
    with pytest.raises(StateError, match="can't handle FETCHING in state READY"):
        client_to(c, ClientInput.FETCHING)
    s = holder("server", ServerState.CLOSED)
    with pytest.raises(StateError, match="can't handle LINKED in state CLOSED"):
        server_to(s, ServerInput.LINKED)
    assert (c.state, s.state) == (ClientState.READY, ServerState.CLOSED)


def _state_writes(path: Path) -> Iterator[tuple[str, int]]:
    """(function, line) of every ``x.state = ...`` in a module."""
    tree = ast.parse(path.read_text())
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                    targets = [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and t.attr == "state":
                        yield func.name, node.lineno


def test_only_the_constructors_and_the_transition_functions_write_a_state() -> None:
    folder = Path(__file__).resolve().parent.parent / "pgsansio" / "engine"  # the source
    writes = {(path.name, func) for path in folder.glob("*.py") for func, _ in _state_writes(path)}
    assert writes == {
        ("_objects.py", "__init__"),  # Client and ServerConn
        ("_states.py", "client_to"),
        ("_states.py", "server_to"),
    }


@pure_only(
    "it wraps client_to/server_to where each engine module imported them, and compiled "
    "modules call them directly; the table itself is checked in both builds above"
)
def test_a_real_session_only_takes_table_transitions(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[tuple[str, Any, Any, Any]] = []

    def recording(kind: str, to: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def wrapper(x: Any, what: Any) -> None:
            before = x.state
            try:
                to(x, what)
            except StateError:
                taken.append((kind, before, what, None))  # the engine would swallow it
                raise
            taken.append((kind, before, what, x.state))

        return wrapper

    # Each engine module imported the functions by name: wrap them where they are used.
    for name in dir(engine_pkg):
        module = getattr(engine_pkg, name)
        if name.startswith("_") and hasattr(module, "__file__"):
            for fn, kind in (("client_to", "client"), ("server_to", "server")):
                if getattr(module, fn, None) is getattr(_states, fn):
                    monkeypatch.setattr(module, fn, recording(kind, getattr(_states, fn)))

    w = World(config(pool_mode="transaction", pool_pin_session_state=False))
    a = logged_in(w)
    assert rows(a.query("select 1")) == [("1",)]  # linked, answered, released to the pool
    a.query("begin")
    a.query("set statement_timeout = 1000")  # untracked: the server must be reset later
    a.query("commit")
    b = logged_in(w)
    assert rows(b.query("select 2")) == [("2",)]
    a.close()
    b.close()
    w.apply(w.engine.shutdown(w.now))
    assert w.exited

    for kind, before, what, after in taken:
        table = CLIENT_TRANSITIONS if kind == "client" else SERVER_TRANSITIONS
        assert after is not None and table.get((before, what)) is after, (kind, before, what)
    clients = [(s0.name, i.name) for k, s0, i, _ in taken if k == "client"]
    assert clients[:2] == [("STARTUP", "CHALLENGED"), ("AUTH", "AUTHENTICATED")]
    assert ("WELCOME", "LOGGED_IN") in clients and ("READY", "CLOSED") in clients
    servers = {(s0.name, i.name) for k, s0, i, _ in taken if k == "server"}
    assert {
        ("CONNECTING", "CONNECTED"),
        ("LOGIN", "LOGGED_IN"),
        ("ACTIVE", "RELEASED"),
        ("INTERNAL", "IDLED"),
        ("IDLE", "LINKED"),
        ("INTERNAL", "QUERIED"),  # the reset after the untracked SET
        ("IDLE", "CLOSED"),  # the shutdown
    } <= servers
