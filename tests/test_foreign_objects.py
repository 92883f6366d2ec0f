"""Library objects kapatch cannot read never change what the application gets (issue 12).

A one-shot iterable of socket options must reach the library untouched (kapatch reading it
first would use it up); a connection whose attributes raise connects as without kapatch.
"""

from __future__ import annotations

import socket

import httpx
import urllib3
from urllib3.connection import HTTPConnection

import kapatch

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
KEEPIDLE = (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 41)


def test_a_generator_of_urllib3_socket_options_reaches_urllib3_whole(http_server):
    kapatch.install(environ={}, profile="fast-failover")
    pool = urllib3.HTTPConnectionPool(
        "127.0.0.1", http_server.port, socket_options=(o for o in [NODELAY, KEEPIDLE])
    )
    conn = pool._get_conn()
    conn.connect()
    try:
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert kapatch.inspect(conn.sock).idle == 41  # the application's option was written
    finally:
        conn.close()


def test_a_generator_of_httpx_socket_options_reaches_httpcore_whole(http_server):
    kapatch.install(environ={}, profile="fast-failover")
    transport = httpx.HTTPTransport(socket_options=(o for o in [NODELAY, KEEPIDLE]))
    with httpx.Client(transport=transport) as client:
        seen = {}

        def grab(response):
            sock = response.extensions["network_stream"].get_extra_info("socket")
            seen["idle"] = kapatch.inspect(sock).idle
            seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        client.event_hooks["response"] = [grab]
        assert client.get(http_server.url + "/ok").status_code == 200
    assert seen == {"idle": 41, "nodelay": 1}


class Unreadable(HTTPConnection):
    @property  # type: ignore[override]
    def socket_options(self):
        raise RuntimeError("kapatch must not be the one to raise this")

    @socket_options.setter
    def socket_options(self, value):
        pass


def test_a_urllib3_connection_kapatch_cannot_read_connects_as_without_it(http_server):
    """kapatch's read fails: counted and logged once; the error the application sees is urllib3's own."""
    import traceback

    import pytest

    kapatch.install(environ={}, profile="fast-failover")
    conn = Unreadable("127.0.0.1", http_server.port)
    with pytest.raises(RuntimeError, match="kapatch must not be the one") as raised:
        conn.connect()  # urllib3 reads socket_options itself when it connects
    conn.close()
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert frames[-1].name == "socket_options"
    assert "urllib3" in frames[-2].filename and "kapatch" not in frames[-2].filename
    assert kapatch.status().adapter("urllib3").counts["failed"] == 1
