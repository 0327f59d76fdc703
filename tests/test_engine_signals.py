"""The operator's signals: what ``Engine.signal`` makes of each (the policy in
:mod:`pgsansio.engine._signals`), and the reload's warning about listening settings.

Frontends only hand a signal's name over; every decision is checked here, on the real
engine in the synchronous World of tests/test_engine.py.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import replace

import pytest
from test_engine import World, config, logged_in, rows

from pgsansio.engine import Exit, Log, Reload
from pgsansio.protocol import Query


def test_sighup_asks_the_frontend_to_reload() -> None:
    w = World(config())
    assert w.engine.signal("SIGHUP", w.now) == [Reload()]


def test_sigusr1_pauses_and_sigusr2_resumes() -> None:
    w = World(config())
    a = logged_in(w)
    a.query("select 1")
    w.apply(w.engine.signal("SIGUSR1", w.now))
    assert "SIGUSR1: pausing; SIGUSR2 resumes" in w.logs
    a.send(Query("select 2"))
    assert a.events() == []
    w.apply(w.engine.signal("SIGUSR2", w.now))
    assert "SIGUSR2: resuming" in w.logs
    assert rows(a.events()) == [("2",)]


@pytest.mark.parametrize("first", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_shutdown_signal_exits_at_once(first: str, second: str) -> None:
    w = World(config())
    a = logged_in(w)
    effects = w.engine.signal(first, w.now)
    assert any(
        isinstance(e, Log) and e.message.startswith(f"{first}: shutting down") for e in effects
    )
    w.apply(effects)
    # SIGINT drains (the idle client goes at once); SIGTERM waits for the client.
    assert a.closed == (first == "SIGINT")
    assert w.exited == (first == "SIGINT")
    again = w.engine.signal(second, w.now)
    code = 128 + signal.Signals[second].value
    assert again[-1] == Exit(code, at_once=True)
    assert isinstance(again[0], Log) and again[0].level == logging.WARNING
    assert "during shutdown, so at once" in again[0].message


def test_sigterm_waits_for_the_last_client() -> None:
    w = World(config())
    a = logged_in(w)
    w.apply(w.engine.signal("SIGTERM", w.now))
    assert not w.exited and not a.closed
    a.close()
    assert w.exited


def test_an_unknown_signal_is_ignored() -> None:
    w = World(config())
    assert w.engine.signal("SIGWINCH", w.now) == []
    assert w.engine.signal("SIGINT", w.now)  # still the first shutdown signal


def test_reload_warns_when_listening_settings_change() -> None:
    cfg = config()
    w = World(cfg)
    general = replace(cfg.general, port=cfg.general.port + 1, enable_prometheus_exporter=True)
    w.apply(w.engine.reload(replace(cfg, general=general), w.now))
    changed = [m for m in w.logs if "keeps listening as before until it is restarted" in m]
    assert len(changed) == 2
    assert changed[0].startswith("host/port changed")
    assert changed[1].startswith("the Prometheus exporter changed")
    w.logs.clear()
    w.apply(w.engine.reload(replace(cfg, general=general), w.now))
    assert not [m for m in w.logs if "keeps listening" in m]
