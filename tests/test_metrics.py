"""The Prometheus exporter (``GET /metrics``), sans-IO, on fake backends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import DB, World, config, logged_in


def scrape(w: World, request: bytes, cid: int = 1000) -> bytes:
    w.apply(w.engine.metrics_connected(cid, "127.0.0.1:5555", w.now))
    w.apply(w.engine.client_data(cid, request, w.now))
    assert cid in w.closed_clients
    return bytes(w.inbox.pop(cid, b""))


def test_metrics_get_answers_pgcat_families() -> None:
    w = World(config())
    a = logged_in(w)
    for _ in range(3):
        a.query("select 1")
    answer = scrape(w, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head
    text = body.decode()
    assert f'pgcat_stats_total_xact_count{{pool="{DB}",database="{DB}"}} 3' in text
    assert "# TYPE pgcat_stats_total_xact_count counter" in text
    assert f'pgcat_pools_cl_idle{{pool="{DB}",user="alice"}} 1' in text
    assert "pgcat_servers_idle_count{" in text and "pgcat_databases_pool_size{" in text


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000, b"400"),
    ],
)
def test_metrics_other_requests(request_bytes: bytes, status: bytes) -> None:
    w = World(config())
    assert scrape(w, request_bytes).split(b" ")[1] == status


def test_metrics_request_in_pieces() -> None:
    w = World(config())
    w.apply(w.engine.metrics_connected(7000, "peer", w.now))
    w.apply(w.engine.client_data(7000, b"GET /metr", w.now))
    assert 7000 not in w.closed_clients
    w.apply(w.engine.client_data(7000, b"ics HTTP/1.0\r\n\r\n", w.now))
    assert bytes(w.inbox[7000]).startswith(b"HTTP/1.1 200")


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=5))
def test_any_bytes_on_the_metrics_port_get_an_http_answer_or_wait(chunks: list[bytes]) -> None:
    w = World(config())
    w.apply(w.engine.metrics_connected(500, "peer", w.now))
    for chunk in chunks:
        w.apply(w.engine.client_data(500, chunk, w.now))
        if 500 in w.closed_clients:
            assert bytes(w.inbox[500]).startswith(b"HTTP/1.1 ")
            break
    else:
        assert 500 not in w.inbox  # nothing said until the request head is complete
        assert sum(map(len, chunks)) <= 8192 + 3000
    w.apply(w.engine.client_closed(500, w.now))
    assert not w.engine.metrics.http
