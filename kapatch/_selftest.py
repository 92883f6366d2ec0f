"""The doctor's live self-test. Runs in a CHILD process, so the doctor's own process stays clean.

The child imports each installed client library, installs the policy, and makes one
real loopback connection through each client to a tiny listener of its own that
speaks just enough of the protocol for the client to finish connecting (HTTP/1.1,
RESP, the PostgreSQL startup handshake, the MySQL handshake). It then reads the options back from the
client's own socket with :func:`kapatch.inspect`: what it reports as verified was
read from the kernel, never inferred from what kapatch meant to do.

Protocol: the parent writes one JSON request on stdin, the child prints one JSON
result on stdout (see :func:`main`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

__all__ = ["CHILD_BOOTSTRAP", "main"]

# Run with ``python -c CHILD_BOOTSTRAP``: sys.path comes from the parent (so a test that
# shadows a library on sys.path is seen by the child too) before kapatch is imported.
CHILD_BOOTSTRAP = (
    "import json, sys; request = json.loads(sys.stdin.read()); sys.path[:] = request['sys_path']; "
    "from kapatch._selftest import main; main(request)"
)

Handler = Callable[[socket.socket], None]


# --- the listener: one thread per listening socket, one per accepted connection ---------------
class _Listener:
    def __init__(self, handler: Handler, timeout: float) -> None:
        self._handler = handler
        self._timeout = timeout
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 300  # bounded even if stop() is never called
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(self._timeout)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ValueError, struct.error):
            self._handler(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def _serve_http(conn: socket.socket) -> None:
    """HTTP/1.1 keep-alive: 200 ``ok`` to every request, until the client closes."""
    stream = conn.makefile("rb")
    for _ in range(100):
        request = stream.readline()
        if not request:
            return
        while stream.readline() not in (b"\r\n", b"\n", b""):
            pass
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")


def _read_resp_command(stream: BinaryIO) -> list[bytes] | None:
    line = stream.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.split()  # inline command
    parts = []
    for _ in range(int(line[1:])):
        size = int(stream.readline()[1:])
        parts.append(stream.read(size + 2)[:-2])
    return parts


def _serve_resp(conn: socket.socket) -> None:
    """Just enough RESP for redis-py's handshake: HELLO 3 -> a RESP3 map, PING -> PONG, the rest OK."""
    stream = conn.makefile("rb")
    for _ in range(100):
        command = _read_resp_command(stream)
        if command is None:
            return
        name = command[0].upper() if command else b""
        if name == b"PING":
            conn.sendall(b"+PONG\r\n")
        elif name == b"HELLO" and command[1:2] == [b"3"]:  # redis-py 8 speaks RESP3 by default
            conn.sendall(
                b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.4.0\r\n$5\r\nproto\r\n:3\r\n"
            )
        elif name == b"HELLO":
            conn.sendall(b"-ERR unknown command 'HELLO'\r\n")
        else:
            conn.sendall(b"+OK\r\n")


def _pg_message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _serve_postgres(conn: socket.socket) -> None:
    """The PostgreSQL startup handshake, trust auth, then idle until Terminate."""
    stream = conn.makefile("rb")
    for _ in range(4):  # SSLRequest / GSSENCRequest may come before the startup packet
        (length,) = struct.unpack("!I", stream.read(4))
        body = stream.read(length - 4)
        (code,) = struct.unpack("!I", body[:4])
        if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: "not here"
            conn.sendall(b"N")
            continue
        break
    else:
        return
    reply = _pg_message(b"R", struct.pack("!I", 0))  # AuthenticationOk
    for name, value in (
        ("server_version", "16.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ):
        reply += _pg_message(b"S", name.encode() + b"\0" + value.encode() + b"\0")
    reply += _pg_message(b"K", struct.pack("!II", os.getpid(), 12345))
    reply += _pg_message(b"Z", b"I")
    conn.sendall(reply)
    for _ in range(100):
        kind = stream.read(1)
        if kind in (b"", b"X"):
            return
        (length,) = struct.unpack("!I", stream.read(4))
        stream.read(length - 4)
        if kind == b"Q":
            conn.sendall(_pg_message(b"I", b"") + _pg_message(b"Z", b"I"))


def _mysql_packet(sequence: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([sequence]) + payload


_MYSQL_OK = b"\x00\x00\x00" + struct.pack("<HH", 2, 0)  # OK: 0 rows, id 0, autocommit on, 0 warnings


def _serve_mysql(conn: socket.socket) -> None:
    """The MySQL handshake (any user, no password), then OK to every query until COM_QUIT."""
    # Capabilities: LONG_PASSWORD, CONNECT_WITH_DB, PROTOCOL_41, TRANSACTIONS,
    # SECURE_CONNECTION, PLUGIN_AUTH; no SSL, so the client goes on in clear text.
    capabilities = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x80000
    salt = b"kapatch-selftest-20b"[:20]
    greeting = (
        b"\x0a" + b"5.5.5-10.11.0-kapatch-selftest\x00" + struct.pack("<I", os.getpid() & 0xFFFF)
        + salt[:8] + b"\x00" + struct.pack("<H", capabilities & 0xFFFF) + b"\x2d"
        + struct.pack("<H", 2) + struct.pack("<H", capabilities >> 16) + bytes([21]) + b"\x00" * 10
        + salt[8:] + b"\x00" + b"mysql_native_password\x00"
    )  # fmt: skip
    conn.sendall(_mysql_packet(0, greeting))
    stream = conn.makefile("rb")
    header = stream.read(4)  # the client's handshake response: accept whatever it sends
    stream.read(int.from_bytes(header[:3], "little"))
    conn.sendall(_mysql_packet(header[3] + 1, _MYSQL_OK))
    for _ in range(100):
        header = stream.read(4)
        if len(header) < 4:
            return
        command = stream.read(int.from_bytes(header[:3], "little"))
        if command[:1] in (b"", b"\x01"):  # COM_QUIT
            return
        conn.sendall(_mysql_packet(header[3] + 1, _MYSQL_OK))


# --- one client each: connect for real, return the client's own socket -------------------------
@contextlib.contextmanager
def _raw_socket(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        yield sock, "socket.create_connection"


@contextlib.contextmanager
def _urllib3(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, timeout=timeout, retries=False)
    try:
        response = pool.urlopen("GET", "/", preload_content=False, release_conn=False)
        # urllib3 2 names it .connection; 1.26 only has ._connection
        connection: Any = getattr(response, "connection", None) or getattr(response, "_connection", None)
        response.read()
        yield connection.sock, "urllib3.HTTPConnectionPool GET, the pooled connection's socket"
        response.release_conn()
    finally:
        pool.close()


@contextlib.contextmanager
def _redis(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout)
    connection: Any = client.connection_pool.make_connection()
    try:
        connection.connect()
        yield connection._sock, "redis.Redis pool connection (RESP handshake done), its _sock"
    finally:
        connection.disconnect()
        client.close()


def _libpq_parameters(pgconn: Any) -> str:
    wanted = (
        b"keepalives",
        b"keepalives_idle",
        b"keepalives_interval",
        b"keepalives_count",
        b"tcp_user_timeout",
    )
    params = {o.keyword.decode(): (o.val or b"").decode() for o in pgconn.info if o.keyword in wanted}
    return ", ".join(f"{k}={v or '(unset)'}" for k, v in params.items())


_PG_CONNINFO = (
    "host=127.0.0.1 port={port} user=kapatch dbname=kapatch sslmode=disable gssencmode=disable "
    "connect_timeout={timeout}"
)


@contextlib.contextmanager
def _psycopg(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    import psycopg

    with psycopg.connect(_PG_CONNINFO.format(port=port, timeout=max(2, int(timeout)))) as conn:
        described = _libpq_parameters(conn.pgconn)
        # libpq owns the fd: inspect a duplicate, close only the duplicate.
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as dup:
            yield (
                dup,
                f"psycopg.connect (startup handshake done), libpq socket; libpq parameters: {described}",
            )


_LIBPQ_KEEPALIVE = (
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
)  # fmt: skip


@contextlib.contextmanager
def _psycopg2(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    import psycopg2

    conn = psycopg2.connect(_PG_CONNINFO.format(port=port, timeout=max(2, int(timeout))))
    try:
        params = conn.info.dsn_parameters
        described = ", ".join(f"{k}={params.get(k) or '(unset)'}" for k in _LIBPQ_KEEPALIVE)
        with socket.socket(fileno=os.dup(conn.fileno())) as dup:
            yield dup, f"psycopg2.connect (handshake done), libpq socket; libpq parameters: {described}"
    finally:
        conn.close()


@contextlib.contextmanager
def _mysqlclient(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    import MySQLdb

    conn = MySQLdb.connect(host="127.0.0.1", port=port, user="kapatch", connect_timeout=max(2, int(timeout)))
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as dup:
            yield dup, "MySQLdb.connect (handshake done), the connection's fileno()"
    finally:
        conn.close()


@contextlib.contextmanager
def _private_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@contextlib.contextmanager
def _asyncio_socket(port: int, timeout: float) -> Iterator[tuple[Any, str]]:
    with _private_loop() as loop:
        opening = asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        _, writer = loop.run_until_complete(opening)
        try:
            yield (
                writer.get_extra_info("socket"),
                "asyncio.open_connection (selector loop), the transport's socket",
            )
        finally:
            writer.close()
            loop.run_until_complete(writer.wait_closed())


@contextlib.contextmanager
def _redis_asyncio(port: int, timeout: float) -> Iterator[tuple[Any, str]]:
    import redis.asyncio

    with _private_loop() as loop:
        client = redis.asyncio.Redis(
            host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        pool: Any = client.connection_pool
        connection: Any = pool.make_connection()
        try:
            loop.run_until_complete(connection.connect())
            # redis.asyncio sets its keepalive options AFTER connecting: read back after that.
            yield (
                connection._writer.get_extra_info("socket"),
                "redis.asyncio.Redis pool connection (RESP handshake done), the transport's socket",
            )
        finally:
            loop.run_until_complete(connection.disconnect())
            loop.run_until_complete(client.aclose())


@contextlib.contextmanager
def _psycopg_async(port: int, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    import psycopg

    with _private_loop() as loop:
        conninfo = _PG_CONNINFO.format(port=port, timeout=max(2, int(timeout)))
        conn = loop.run_until_complete(psycopg.AsyncConnection.connect(conninfo))
        try:
            described = _libpq_parameters(conn.pgconn)
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as dup:
                yield dup, f"psycopg.AsyncConnection.connect, libpq socket; libpq parameters: {described}"
        finally:
            loop.run_until_complete(conn.close())


@contextlib.contextmanager
def _httpx(port: int, timeout: float) -> Iterator[tuple[Any, str]]:
    import httpx

    # trust_env=False: a proxy from the environment must not take the loopback request elsewhere.
    with (
        httpx.Client(timeout=timeout, trust_env=False) as client,
        client.stream("GET", f"http://127.0.0.1:{port}/") as response,
    ):
        response.read()
        stream = response.extensions["network_stream"]
        yield stream.get_extra_info("socket"), "httpx.Client GET, httpcore's network stream socket"


@contextlib.contextmanager
def _httpx_async(port: int, timeout: float) -> Iterator[tuple[Any, str]]:
    import httpx

    with _private_loop() as loop:
        client = httpx.AsyncClient(timeout=timeout, trust_env=False)

        async def get() -> Any:
            response = await client.send(
                client.build_request("GET", f"http://127.0.0.1:{port}/"), stream=True
            )
            await response.aread()
            return response

        try:
            response = loop.run_until_complete(get())
            try:
                stream = response.extensions["network_stream"]
                yield (
                    stream.get_extra_info("socket"),
                    "httpx.AsyncClient GET (anyio), the network stream's socket",
                )
            finally:
                loop.run_until_complete(response.aclose())
        finally:
            loop.run_until_complete(client.aclose())


@contextlib.contextmanager
def _gevent(port: int, timeout: float) -> Iterator[tuple[Any, str]]:
    import gevent.socket  # type: ignore[import-untyped]  # gevent's own class, no monkey-patching here

    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout)
    try:
        yield sock, "gevent.socket.create_connection, gevent's socket class"
    finally:
        sock.close()


@contextlib.contextmanager
def _uvloop(port: int, timeout: float) -> Iterator[tuple[Any, str]]:
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        opening = asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        _, writer = loop.run_until_complete(opening)
        try:
            yield writer.get_extra_info("socket"), "asyncio.open_connection on a uvloop loop (libuv connects)"
        finally:
            writer.close()
            loop.run_until_complete(writer.wait_closed())
    finally:
        loop.close()


# client name -> (library module to import, listener protocol, connect function, adapters that may own it)
_CLIENTS: dict[str, tuple[str | None, Handler, Callable[..., Any], tuple[str, ...]]] = {
    "socket": (None, _serve_http, _raw_socket, ("socket",)),
    "urllib3": ("urllib3", _serve_http, _urllib3, ("urllib3", "socket")),
    "redis": ("redis", _serve_resp, _redis, ("redis", "socket")),
    "psycopg": ("psycopg", _serve_postgres, _psycopg, ("psycopg",)),
    "asyncio": (None, _serve_http, _asyncio_socket, ("socket",)),
    "redis.asyncio": ("redis", _serve_resp, _redis_asyncio, ("redis", "socket")),
    "psycopg.async": ("psycopg", _serve_postgres, _psycopg_async, ("psycopg",)),
    "psycopg2": ("psycopg2", _serve_postgres, _psycopg2, ("psycopg2",)),
    "mysqlclient": ("MySQLdb.connections", _serve_mysql, _mysqlclient, ("mysqlclient",)),
    "httpx": ("httpx", _serve_http, _httpx, ("httpx", "socket")),
    "httpx.async": ("httpx", _serve_http, _httpx_async, ("httpx", "socket")),
    "gevent": ("gevent", _serve_http, _gevent, ("gevent",)),
    "uvloop": ("uvloop", _serve_http, _uvloop, ("uvloop",)),
}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _state_dict(state: Any) -> dict[str, Any]:
    from kapatch._records import as_dict

    return as_dict(state)


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Import, install, connect through each client, read back. Never raises."""
    import kapatch
    from kapatch.rules import Destination, first_match
    from kapatch.runtime import install, uninstall

    timeout = float(request.get("timeout", 5.0))
    libraries: dict[str, str | None] = request.get("libraries", {})
    result: dict[str, Any] = {"imports": {}, "checks": [], "log": [], "install_error": None}

    # 1. Does each installed library import? (metadata can say installed while the code is broken)
    for name, module in libraries.items():
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except BaseException as error:  # a broken library may raise anything
            result["imports"][name] = f"{type(error).__name__}: {error}"
        else:
            result["imports"][name] = None

    capture = _Capture()
    logging.getLogger("kapatch").addHandler(capture)
    try:
        current = install(environ=request.get("environ", {}), enabled=True, **request.get("settings", {}))
    except Exception as error:
        result["install_error"] = f"{type(error).__name__}: {error}"
        return result
    config = kapatch.runtime.current_config()
    assert config is not None
    result["status"] = current.render()
    try:
        for client, (module, handler, connect, owners) in _CLIENTS.items():
            broken = any(result["imports"].get(name) for name, m in libraries.items() if m == module)
            if module is not None and (module not in libraries.values() or broken):
                continue  # not installed, or broken (reported above)
            result["checks"].append(
                _check(
                    client,
                    handler,
                    connect=connect,
                    owners=owners,
                    timeout=timeout,
                    config=config,
                    destination_type=Destination,
                    first_match=first_match,
                )
            )
    finally:
        uninstall()
        logging.getLogger("kapatch").removeHandler(capture)
    result["log"] = capture.messages
    return result


def _counts() -> dict[str, dict[str, int]]:
    from kapatch.runtime import status

    return {a.name: dict(a.counts) for a in status().adapters}


def _check(
    client: str,
    handler: Handler,
    *,
    connect: Callable[..., Any],
    owners: tuple[str, ...],
    timeout: float,
    config: Any,
    destination_type: Any,
    first_match: Any,
) -> dict[str, Any]:
    from kapatch import inspect
    from kapatch.runtime import status

    check: dict[str, Any] = {
        "client": client, "owner": None, "action": None, "expected": None, "kernel": None,
        "mismatches": [], "verified": False, "how": "", "error": None, "note": "",
    }  # fmt: skip
    enabled = {a.name for a in status().adapters if a.enabled}
    listener = _Listener(handler, timeout)
    try:
        before = _counts()
        with connect(listener.port, timeout) as (sock, how):
            state = inspect(sock)
        after = _counts()
    except Exception as error:
        check["error"] = f"{type(error).__name__}: {error}"
        check["traceback"] = traceback.format_exc(limit=4)
        return check
    finally:
        listener.stop()
    check["how"] = how
    check["kernel"] = _state_dict(state)
    moved = {
        (name, counter)
        for name, counts in after.items()
        for counter, value in counts.items()
        if value != before.get(name, {}).get(counter, 0)
    }
    owner = next((name for name in owners if any(n == name for n, _ in moved)), None)
    if owner is not None and owner != owners[0] and owners[0] in enabled:
        check["note"] = f"handled by the {owner} adapter although the {owners[0]} adapter is enabled; "
    if owner is None:
        expected_owner = next((name for name in owners if name in enabled), None)
        check["owner"] = expected_owner
        if expected_owner is None:
            check["note"] = "no enabled adapter covers this client (configuration): nothing to compare"
            check["action"] = "not covered"
        else:
            check["action"] = "unseen"
            check["error"] = f"adapter {expected_owner} is enabled but never saw this connection"
        return check
    action = next(counter for name, counter in sorted(moved) if name == owner)
    check["owner"], check["action"] = owner, action
    if action != "configured":
        check["note"] += {
            "skipped": "skipped (a rule or a disabled policy): nothing to compare",
            "respected": "the client configured keepalive itself (respect mode): left alone",
            "failed": "the kernel refused an option (see the log)",
        }.get(action, action)
        if action == "failed":
            check["error"] = "the kernel refused an option"
        return check
    policy = config.for_adapter(owner).policy
    rule = first_match(config.rules, owner, destination_type("127.0.0.1", "127.0.0.1", listener.port))
    if rule is not None and rule.action == "apply":
        policy = rule.policy_for(policy)
    check["expected"] = policy.describe()
    check["mismatches"] = list(state.mismatches(policy))
    check["verified"] = True
    return check


def main(request: dict[str, Any]) -> None:
    try:
        result = run(request)
    except BaseException as error:  # report, never a bare traceback
        result = {"crash": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
