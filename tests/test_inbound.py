"""Inbound (opt-in): accepted connections carry the inbound policy, read back from accepted sockets.

Each server reports the keepalive options of the socket it accepted (read on the server
side, from the kernel), so what is asserted is what Linux copied from the listener.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from servers import free_port

import kapatch

POLICY = {"KAPATCH_IDLE": "13", "KAPATCH_INTERVAL": "3", "KAPATCH_COUNT": "4"}
WANTED = (1, 13, 3, 4, 25000)
INBOUND_OWN = {"KAPATCH_INBOUND_IDLE": "21"}  # the inbound adapter's own fields
WANTED_OWN = (1, 21, 3, 4, 33000)


def row(sock: Any) -> tuple[int, ...]:
    state = kapatch.inspect(sock)
    return (int(state.enabled), state.idle, state.interval, state.count, state.user_timeout_ms or 0)


# -- the servers: each returns the row of the socket it accepted -------------------------------


class _RowHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(json.dumps(row(self.request)).encode() + b"\n")


def _read_row(address: tuple[str, int]) -> tuple[int, ...]:
    with socket.create_connection(address, timeout=10) as client:
        return tuple(json.loads(client.makefile().readline()))


def _serve_in_thread(server: socketserver.BaseServer) -> Callable[[], None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def via_socketserver() -> tuple[int, ...]:
    server = socketserver.TCPServer(("127.0.0.1", 0), _RowHandler)
    stop = _serve_in_thread(server)
    try:
        return _read_row(server.server_address[:2])  # type: ignore[index]
    finally:
        stop()


class _HttpRowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(row(self.connection)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def via_http_server() -> tuple[int, ...]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HttpRowHandler)
    stop = _serve_in_thread(server)
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host!s}:{port}/", timeout=10) as response:
            return tuple(json.loads(response.read()))
    finally:
        stop()


async def _start_server_row() -> tuple[int, ...]:
    accepted: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(row(writer.get_extra_info("socket")))
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    async with server:
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        result = await asyncio.wait_for(accepted, 10)
        writer.close()
        return result


def via_asyncio_selector() -> tuple[int, ...]:
    return asyncio.run(_start_server_row())


def via_asyncio_uvloop() -> tuple[int, ...]:
    return uvloop.run(_start_server_row())


SERVERS = [via_socketserver, via_http_server, via_asyncio_selector, via_asyncio_uvloop]
SERVER_IDS = ["socketserver", "http.server", "asyncio-selector", "asyncio-uvloop"]


@pytest.mark.parametrize("serve", SERVERS, ids=SERVER_IDS)
def test_accepted_sockets_carry_the_inbound_policy(install, serve):
    install(environ={**POLICY, "KAPATCH_INBOUND": "1"})
    assert serve() == WANTED
    assert kapatch.status().adapter("inbound").counts["configured"] == 1


@pytest.mark.parametrize("serve", SERVERS, ids=SERVER_IDS)
def test_the_inbound_adapters_own_fields_through_install(install, serve):
    install(environ={**POLICY, **INBOUND_OWN}, inbound=True)
    assert serve() == WANTED_OWN


@pytest.mark.parametrize("serve", SERVERS, ids=SERVER_IDS)
def test_nothing_without_inbound(install, serve):
    install(environ=POLICY)  # every outbound adapter on, inbound off by default
    keepalive, *_, user_timeout = serve()
    assert (keepalive, user_timeout) == (0, 0)
    assert kapatch.status().adapter("inbound").enabled is False


@pytest.fixture
def configured_listener() -> Iterator[socket.socket]:
    """A listener the application configured itself before listening (idle 50 s)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 50)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def _accept_row(listener: socket.socket) -> tuple[int, ...]:
    listener.listen()
    with socket.create_connection(listener.getsockname()[:2]) as _client:
        accepted, _ = listener.accept()
        with accepted:
            return row(accepted)


def test_respect_mode_leaves_the_applications_listener_fields(install, configured_listener):
    install(environ=POLICY, inbound=True)
    got = _accept_row(configured_listener)
    assert got[:4] == (1, 50, 3, 4)  # its idle stays; the fields nobody chose get the policy
    assert dict(kapatch.status().adapter("inbound").kept) == {"enabled": 1, "idle": 1}


def test_override_mode_writes_over_the_applications_listener(install, configured_listener):
    install(environ={**POLICY, "KAPATCH_MODE": "override"}, inbound=True)
    assert _accept_row(configured_listener) == WANTED


# -- servers in their own processes: gevent's StreamServer, a gunicorn sync worker -------------


def child_env(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    environ.update(POLICY)
    environ.update(extra)
    return environ


GEVENT_SERVER = """
from gevent import monkey; monkey.patch_all()
import json, socket, sys
import gevent
from gevent.server import StreamServer
import kapatch
def row(sock):
    s = kapatch.inspect(sock)
    return [int(s.enabled), s.idle, s.interval, s.count, s.user_timeout_ms or 0]
def handle(sock, address):
    sock.sendall(json.dumps(row(sock)).encode() + b"\\n")
server = StreamServer(("127.0.0.1", 0), handle)
server.start()
client = socket.create_connection(server.address)
print(client.makefile().readline().strip())
server.stop()
"""


@pytest.mark.parametrize("inbound", ["1", "0"])
def test_gevent_stream_server(inbound):
    env = child_env(KAPATCH_ENABLED="1", KAPATCH_INBOUND=inbound)
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SERVER], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    got = tuple(json.loads(proc.stdout.strip().splitlines()[-1]))
    # An accepted socket never connects: its row is the one the kernel copied from the listener.
    if inbound == "1":
        assert got == WANTED
    else:
        assert (got[0], got[4]) == (0, 0)


GUNICORN_APP = """
import json, socket

def app(environ, start_response):
    sock = environ["gunicorn.socket"]
    get = sock.getsockopt
    body = json.dumps([
        get(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    ]).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.parametrize("inbound", ["1", "0"])
def test_gunicorn_sync_worker(tmp_path, inbound):
    (tmp_path / "kapatch_gunicorn_app.py").write_text(GUNICORN_APP)
    port = free_port()
    env = child_env(KAPATCH_ENABLED="1", KAPATCH_INBOUND=inbound, PYTHONPATH=str(tmp_path))
    command = [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync"]
    proc = subprocess.Popen(
        [*command, "--bind", f"127.0.0.1:{port}", "kapatch_gunicorn_app:app"],
        env=env,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        got = _get_when_up(f"http://127.0.0.1:{port}/", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    if inbound == "1":
        assert got == WANTED
    else:
        assert (got[0], got[4]) == (0, 0)


def _get_when_up(url: str, proc: subprocess.Popen[bytes]) -> tuple[int, ...]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return tuple(json.loads(response.read()))
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no output") from None
            time.sleep(0.1)
