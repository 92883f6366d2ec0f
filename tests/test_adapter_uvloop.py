"""uvloop adapter: connections libuv makes in C carry the policy; options read back from the kernel."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio
import uvloop
from checks import READ_SOCKET_SOURCE
from servers import free_port

import kapatch

POLICY = {"KAPATCH_IDLE": "13", "KAPATCH_INTERVAL": "3", "KAPATCH_COUNT": "4"}
WANTED = (1, 13, 3, 4, 25000)


def row(sock: Any) -> tuple[int, ...]:
    state = kapatch.inspect(sock)
    return (int(state.enabled), state.idle, state.interval, state.count, state.user_timeout_ms or 0)


def with_uvloop_run(main: Callable[[], Awaitable[Any]]) -> Any:
    return uvloop.run(main())


def with_uvloop_install(main: Callable[[], Awaitable[Any]]) -> Any:
    uvloop.install()  # the policy: every new loop is uvloop's
    try:
        return asyncio.run(main())
    finally:
        asyncio.set_event_loop_policy(None)


def with_loop_factory(main: Callable[[], Awaitable[Any]]) -> Any:
    if sys.version_info >= (3, 12):
        return asyncio.run(main(), loop_factory=uvloop.new_event_loop)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # asyncio.run's own engine
            return runner.run(main())
    loop = uvloop.new_event_loop()  # Python 3.10 has neither: the same factory, run by hand
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


ENTRY_POINTS = [with_uvloop_run, with_uvloop_install, with_loop_factory]
ENTRY_IDS = ["uvloop.run", "uvloop.install", "loop_factory"]


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """A plain loopback listener: the kernel completes the handshake, nothing is served."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield server.getsockname()[:2]
    finally:
        server.close()


def on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def open_connection_row(address: tuple[str, int]) -> tuple[int, ...]:
    on_uvloop()
    _, writer = await asyncio.open_connection(*address)
    try:
        return row(writer.get_extra_info("socket"))
    finally:
        writer.close()


@pytest.mark.parametrize("mode", ["respect", "override"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=ENTRY_IDS)
def test_open_connection_carries_the_policy(install, listener, entry, mode):
    install(environ={**POLICY, "KAPATCH_MODE": mode})
    assert entry(lambda: open_connection_row(listener)) == WANTED
    counts = kapatch.status().adapter("uvloop").counts
    assert counts["configured"] == 1
    assert kapatch.status().adapter("socket").counts["configured"] == 0


def test_the_uvloop_adapters_own_fields(install, listener):
    install(environ={**POLICY, "KAPATCH_UVLOOP_IDLE": "11"})
    assert with_uvloop_run(lambda: open_connection_row(listener)) == (1, 11, 3, 4, 23000)


def test_nothing_without_kapatch(listener):
    keepalive, *_, user_timeout = with_uvloop_run(lambda: open_connection_row(listener))
    assert (keepalive, user_timeout) == (0, 0)


def test_uninstall_puts_the_loop_back(install):
    install(environ=POLICY)
    assert "create_connection" in vars(uvloop.Loop)
    kapatch.uninstall()
    assert "create_connection" not in vars(uvloop.Loop)
    assert "create_server" not in vars(uvloop.Loop)


@pytest.mark.parametrize("mode", ["respect", "override"])
def test_explicit_sock_the_application_configured(install, listener, mode):
    """``create_connection(sock=...)``: the application connected and configured it itself."""
    install(environ={**POLICY, "KAPATCH_MODE": mode})

    async def main() -> tuple[int, ...]:
        on_uvloop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 50)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, listener)  # uvloop calls sock.connect
        _, writer = await asyncio.open_connection(sock=sock)
        try:
            return row(writer.get_extra_info("socket"))
        finally:
            writer.close()

    got = with_uvloop_run(main)
    if mode == "respect":
        assert got[:4] == (1, 50, 3, 4)
    else:
        assert got == WANTED


def _pool_args(client: Any) -> tuple[str, ...]:
    # redis-py < 5.3 requires a command name; later versions deprecate passing one.
    import inspect

    command = inspect.signature(client.connection_pool.get_connection).parameters.get("command_name")
    return ("PING",) if command is not None and command.default is inspect.Parameter.empty else ()


async def redis_row(port: int, **options: Any) -> tuple[int, ...]:
    on_uvloop()
    client = redis.asyncio.Redis(host="127.0.0.1", port=port, **options)
    try:
        assert await client.ping()
        connection = await client.connection_pool.get_connection(*_pool_args(client))
        try:
            return row(connection._writer.transport.get_extra_info("socket"))
        finally:
            await client.connection_pool.release(connection)
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", ["respect", "override"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=ENTRY_IDS)
def test_redis_asyncio_gets_the_redis_policy(install, redis_server, entry, mode):
    install(environ={**POLICY, "KAPATCH_MODE": mode, "KAPATCH_REDIS_IDLE": "17"})
    assert entry(lambda: redis_row(redis_server.port)) == (1, 17, 3, 4, 29000)
    status = kapatch.status()
    assert status.adapter("redis").counts["configured"] == 1
    assert status.adapter("uvloop").counts["configured"] == 0


def test_redis_asyncio_explicit_options_win_in_respect_mode_only(install, redis_server):
    options = {
        "socket_keepalive": True,
        "socket_keepalive_options": {socket.TCP_KEEPIDLE: 40, socket.TCP_KEEPINTVL: 6, socket.TCP_KEEPCNT: 2},
    }
    install(environ=POLICY)
    assert with_uvloop_run(lambda: redis_row(redis_server.port, **options))[:4] == (1, 40, 6, 2)
    install(environ={**POLICY, "KAPATCH_MODE": "override"})
    assert with_uvloop_run(lambda: redis_row(redis_server.port, **options)) == WANTED


async def httpx_row(url: str, **transport_options: Any) -> tuple[int, ...]:
    on_uvloop()
    transport = httpx.AsyncHTTPTransport(**transport_options)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{url}/ok")
        assert response.status_code == 200
        return row(response.extensions["network_stream"].get_extra_info("socket"))


@pytest.mark.parametrize("mode", ["respect", "override"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=ENTRY_IDS)
def test_httpx_async_client_gets_the_httpx_policy(install, http_server, entry, mode):
    install(environ={**POLICY, "KAPATCH_MODE": mode, "KAPATCH_HTTPX_IDLE": "19"})
    assert entry(lambda: httpx_row(http_server.url)) == (1, 19, 3, 4, 31000)
    assert kapatch.status().adapter("httpx").counts["configured"] == 1


def test_httpx_explicit_socket_options_win_in_respect_mode_only(install, http_server):
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 41),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 4),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
    ]
    install(environ=POLICY)
    assert with_uvloop_run(lambda: httpx_row(http_server.url, socket_options=options))[:4] == (1, 41, 4, 4)
    install(environ={**POLICY, "KAPATCH_MODE": "override"})
    assert with_uvloop_run(lambda: httpx_row(http_server.url, socket_options=options)) == WANTED


@pytest.mark.parametrize("mode", ["respect", "override"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=ENTRY_IDS)
def test_asyncpg_carries_the_policy(install, postgres_server, entry, mode):
    install(environ={**POLICY, "KAPATCH_MODE": mode})

    async def main() -> tuple[int, ...]:
        on_uvloop()
        connection = await asyncpg.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            database=postgres_server.dbname,
            ssl=False,
        )
        try:
            assert await connection.fetchval("select 1") == 1
            return row(connection._transport.get_extra_info("socket"))
        finally:
            await connection.close()

    assert entry(main) == WANTED


# -- fresh interpreters: import orders and uvicorn's loop set-up --------------------------------

ORDER_CHILD = (
    """
import asyncio, json, os, socket, sys
if sys.argv[1] == "kapatch-first":
    import kapatch  # installed by the .pth (KAPATCH_ENABLED=1)
    import uvloop
else:
    import uvloop
    import kapatch
    kapatch.install()
"""
    + READ_SOCKET_SOURCE
    + """
async def main():
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    listener = socket.create_server(("127.0.0.1", 0))
    _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
    print(json.dumps(read(writer.get_extra_info("socket"))))
uvloop.run(main())
"""
)


def child_env(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    environ.update(POLICY)
    environ.update(extra)
    return environ


def as_row(values: dict[str, int]) -> tuple[int, ...]:
    return tuple(values[k] for k in ("keepalive", "idle", "interval", "count", "user_timeout_ms"))


@pytest.mark.parametrize("order", ["kapatch-first", "uvloop-first"])
def test_both_import_orders(order):
    env = child_env(KAPATCH_ENABLED="1") if order == "kapatch-first" else child_env()
    proc = subprocess.run(
        [sys.executable, "-c", ORDER_CHILD, order], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert as_row(json.loads(proc.stdout)) == WANTED


UVICORN_APP = (
    """
import asyncio, json, os, socket
"""
    + READ_SOCKET_SOURCE
    + """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    _, writer = await asyncio.open_connection("127.0.0.1", int(os.environ["TARGET_PORT"]))
    body = json.dumps({"loop": type(asyncio.get_running_loop()).__module__,
                       "row": read(writer.get_extra_info("socket"))}).encode()
    writer.close()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""
)


@pytest.mark.parametrize("loop", ["auto", "uvloop"])
def test_uvicorn_loop_setup(tmp_path, listener, loop):
    """uvicorn's own loop set-up (``--loop auto`` picks uvloop), kapatch on by the environment alone."""
    (tmp_path / "kapatch_uvicorn_app.py").write_text(UVICORN_APP)
    port = free_port()
    env = child_env(KAPATCH_ENABLED="1", TARGET_PORT=str(listener[1]), PYTHONPATH=str(tmp_path))
    command = [sys.executable, "-m", "uvicorn", "kapatch_uvicorn_app:app", "--port", str(port)]
    proc = subprocess.Popen([*command, "--loop", loop], env=env, stderr=subprocess.PIPE)
    try:
        body = _get_when_up(f"http://127.0.0.1:{port}/", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert body["loop"] == "uvloop"
    assert as_row(body["row"]) == WANTED


def _get_when_up(url: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no output") from None
            time.sleep(0.1)


# -- a loop kapatch does not know: said once, counted --------------------------------------------


class _ThirdPartyLoop(asyncio.AbstractEventLoop):
    """Stands for a loop implemented elsewhere (C, Rust): not asyncio's, not uvloop's."""


def test_an_unknown_event_loop_is_said_once_and_counted(install, caplog):
    install(environ=POLICY)
    with caplog.at_level("WARNING", logger="kapatch"):
        for _ in range(3):  # a loop starting to run, as every loop does through asyncio
            asyncio.events._set_running_loop(_ThirdPartyLoop())
            asyncio.events._set_running_loop(None)
    messages = [r.getMessage() for r in caplog.records if "_ThirdPartyLoop" in r.getMessage()]
    assert len(messages) == 1, messages
    assert "may not carry the policy" in messages[0]
    assert kapatch.status().adapter("eventloops").counts["uncovered"] == 1


@pytest.mark.parametrize("entry", [asyncio.run, uvloop.run], ids=["selector", "uvloop"])
def test_known_loops_are_not_reported(install, listener, entry):
    install(environ=POLICY)

    async def main() -> tuple[int, ...]:
        _, writer = await asyncio.open_connection(*listener)
        got = row(writer.get_extra_info("socket"))
        writer.close()
        return got

    assert entry(main()) == WANTED
    assert kapatch.status().adapter("eventloops").counts["uncovered"] == 0
