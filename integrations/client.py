"""One lab client in its own process: `python -m integrations.client CLIENT SITUATION`.

The client never imports kapatch: with kapatch, the runner only sets KAPATCH_* variables in
its environment. It prints JSON lines on stdout, each with `ev` and a CLOCK_MONOTONIC time
`t` (system-wide on Linux, so the runner compares it with its own clock):

  start     imports done; `kapatch_loaded` says whether kapatch was imported at start-up
  ready     connection established and proven by one answered request; `opts` are the
            keepalive options the kernel reports on every socket to the lab host
  blocking  (keepalive, respect) about to wait on a request that is never answered
  sent      (user-timeout) after the runner's "go" on stdin, once the cut is in place:
            about to send a request that is never acknowledged; (hung-peer) after "go",
            once the server is frozen, and IDLE_BEFORE_CALL s more idle: about to make
            the next ordinary call
  error     the error the application saw: type, message, errno (from the cause chain)
  returned  the call returned (keepalive etc.: the server answered or closed, not
            expected; hung-peer: the library replaced the connection and the call worked)

Situations: `keepalive` (idle connection waiting on a response, then the cut),
`user-timeout` (cut first, then data sent and never acknowledged), `respect` (like
keepalive, but the application set its own keepalive values through the client's own API),
`hung-peer` (the network is fine but the server process is frozen, SIGSTOP; a third
argument names the layer under test: `keepalive`, `heartbeat` or `app-timeout`, the last
one making the client set its own read timeout, APP_TIMEOUT, through its library's API).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from integrations.labservers import GRPC_PORT, HTTP_PORT, MARIADB_PORT, PG_PORT, REDIS_PORT
from integrations.netlab import HOST_ADDR, LAB_ADDR, NS_NAME

SITUATIONS = ("keepalive", "user-timeout", "respect", "hung-peer")
LAYERS = ("keepalive", "heartbeat", "app-timeout")
"""The hung-peer layers: which mechanism, if any, notices a frozen server process."""

# hung-peer: the application's own read timeout (app-timeout layer), and how long a client
# stays idle after the freeze before its next call: longer than the heartbeat interval the
# runner asks for (KAPATCH_HEARTBEAT=2), so a heartbeat is due at that call.
APP_TIMEOUT = 3.0
HEARTBEAT_S = 2.0
HEARTBEAT_TIMEOUT_S = 2.0
IDLE_BEFORE_CALL = 3.0

# The application's own keepalive values in the respect situation: deliberately unlike
# the lab's kapatch policy (2/1/2 -> 4 s), so the measured time tells whose values won.
USER_IDLE, USER_INTERVAL, USER_COUNT = 5, 1, 3
USER_BOUND = USER_IDLE + USER_INTERVAL * USER_COUNT
USER_SOCKOPTS: list[tuple[int, int, int]] = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, USER_IDLE),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, USER_INTERVAL),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, USER_COUNT),
]
USER_REDIS_OPTS = {
    socket.TCP_KEEPIDLE: USER_IDLE,
    socket.TCP_KEEPINTVL: USER_INTERVAL,
    socket.TCP_KEEPCNT: USER_COUNT,
}
USER_LIBPQ_OPTS = {
    "keepalives": 1,
    "keepalives_idle": USER_IDLE,
    "keepalives_interval": USER_INTERVAL,
    "keepalives_count": USER_COUNT,
}

BASE_URL = f"http://{LAB_ADDR}:{HTTP_PORT}"
PG_CONNINFO = (
    f"host={LAB_ADDR} port={PG_PORT} user=postgres dbname=postgres "
    "sslmode=disable gssencmode=disable connect_timeout=10"
)
NEVER_KEY = "kplab:never"  # BLPOP on it with timeout 0 blocks forever on the server
MAX_LIFETIME = float(os.environ.get("KPLAB_CLIENT_MAX_S", "600"))


# ---------------------------------------------------------------- events


def emit(ev: str, **data: Any) -> None:
    line = json.dumps({"ev": ev, "t": time.monotonic(), **data}, default=repr)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def describe_error(exc: BaseException) -> dict[str, Any]:
    """Type and message the application saw, plus the first errno in the cause chain."""
    chain = []
    err_no: int | None = None
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(f"{type(cur).__module__}.{type(cur).__qualname__}")
        if err_no is None and isinstance(cur, OSError) and cur.errno:
            err_no = cur.errno
        for arg in getattr(cur, "args", ()):
            if err_no is None and isinstance(arg, OSError) and arg.errno:
                err_no = arg.errno
        cur = cur.__cause__ or cur.__context__
    msg = str(exc)
    if err_no is None and "connection timed out" in msg.lower():
        err_no = errno.ETIMEDOUT  # libpq and redis-py keep only the kernel's strerror
    return {
        "type": chain[0],
        "message": msg[:400],
        "errno": errno.errorcode.get(err_no, str(err_no)) if err_no else None,
        "chain": chain,
    }


def lab_socket_options() -> list[dict[str, Any]]:
    """Keepalive options of every TCP socket of this process connected to the lab host,
    read from the kernel through /proc/self/fd (works for libpq's C sockets too)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            # gRPC core connects dual-stack AF_INET6 sockets: the peer is then ::ffff:198.18.0.2.
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            try:
                peer = s.getpeername()
            except OSError:
                continue
            if peer[0] not in (LAB_ADDR, "::ffff:" + LAB_ADDR):
                continue
            found.append(
                {
                    "fd": fd,
                    "lport": s.getsockname()[1],
                    "peer_port": peer[1],
                    "keepalive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    "idle": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    "interval": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    "count": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    "user_timeout_ms": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                }
            )
        finally:
            s.close()
    return found


# ---------------------------------------------------------------- scenarios


def http_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {LAB_ADDR}\r\n\r\n".encode()


def read_http_ok(recv: Callable[[], bytes]) -> None:
    buf = b""
    while not buf.endswith(b"ok\n"):
        chunk = recv()
        if not chunk:
            raise ConnectionError(f"server closed during /ok: {buf!r}")
        buf += chunk


class Scenario:
    """A client library in one scenario: `warm` connects and proves the connection with
    one answered request; `block` sends a request that is never answered and waits;
    `call` (hung-peer) makes one more ordinary request, which a live server answers at once.

    `app_timeout` (hung-peer, app-timeout layer): the read timeout the application sets
    through its library's own API; None = the library's default (none, for these).
    """

    is_async = False

    def __init__(self, respect: bool, app_timeout: float | None = None) -> None:
        self.respect = respect
        self.app_timeout = app_timeout

    def warm(self) -> Any:
        raise NotImplementedError

    def block(self) -> Any:
        raise NotImplementedError

    def call(self) -> Any:
        raise NotImplementedError

    def heartbeat(self) -> Any:
        """What the library shows of an application-level heartbeat on this client (None:
        none configured): read after warm-up, so it includes what kapatch added."""
        return None


class RawSocket(Scenario):
    def warm(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.respect:
            for level, opt, val in USER_SOCKOPTS:
                self.sock.setsockopt(level, opt, val)
        self.sock.connect((LAB_ADDR, HTTP_PORT))
        self.sock.settimeout(self.app_timeout)
        self.sock.sendall(http_request("/ok"))
        read_http_ok(lambda: self.sock.recv(4096))

    def block(self) -> bytes:
        self.sock.sendall(http_request("/hang"))
        return self.sock.recv(65536)

    def call(self) -> str:
        self.sock.sendall(http_request("/ok"))
        read_http_ok(lambda: self.sock.recv(4096))
        return "ok"


class AsyncioStreams(Scenario):
    is_async = True

    async def warm(self) -> None:
        if self.respect:
            # Configured before connecting, as a careful application would.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            for level, opt, val in USER_SOCKOPTS:
                sock.setsockopt(level, opt, val)
            await asyncio.get_running_loop().sock_connect(sock, (LAB_ADDR, HTTP_PORT))
            self.reader, self.writer = await asyncio.open_connection(sock=sock)
        else:
            self.reader, self.writer = await asyncio.open_connection(LAB_ADDR, HTTP_PORT)
        await self.call()

    async def call(self) -> str:
        self.writer.write(http_request("/ok"))
        await self.writer.drain()
        buf = b""
        while not buf.endswith(b"ok\n"):
            # Streams have no read timeout of their own: an application bounds the read.
            chunk = await asyncio.wait_for(self.reader.read(4096), self.app_timeout)
            if not chunk:
                raise ConnectionError("server closed during /ok")
            buf += chunk
        return "ok"

    async def block(self) -> bytes:
        self.writer.write(http_request("/hang"))
        await self.writer.drain()
        return await self.reader.read(65536)


class Requests(Scenario):
    def warm(self) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.connection import HTTPConnection

        self.session = requests.Session()
        if self.respect:

            class KeepAliveAdapter(HTTPAdapter):
                def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                    kwargs["socket_options"] = [
                        *HTTPConnection.default_socket_options,
                        *USER_SOCKOPTS,
                    ]
                    super().init_poolmanager(*args, **kwargs)

            self.session.mount("http://", KeepAliveAdapter())
        self.session.get(f"{BASE_URL}/ok").raise_for_status()

    def block(self) -> Any:
        return self.session.get(f"{BASE_URL}/hang")  # no timeout: requests' default

    def call(self) -> int:
        # timeout=None is requests' default; app-timeout: (connect, read).
        timeout = (10.0, self.app_timeout) if self.app_timeout else None
        resp = self.session.get(f"{BASE_URL}/ok", timeout=timeout)
        resp.raise_for_status()
        return resp.status_code


class Urllib3(Scenario):
    def warm(self) -> None:
        import urllib3
        from urllib3.connection import HTTPConnection

        kwargs: dict[str, Any] = {}
        if self.respect:
            kwargs["socket_options"] = [*HTTPConnection.default_socket_options, *USER_SOCKOPTS]
        if self.app_timeout:
            kwargs["timeout"] = urllib3.Timeout(connect=10.0, read=self.app_timeout)
        # retries=False: measure the dead connection, not a reconnect to a dead host.
        self.pool = urllib3.PoolManager(retries=False, **kwargs)
        self.pool.request("GET", f"{BASE_URL}/ok")

    def block(self) -> Any:
        return self.pool.request("GET", f"{BASE_URL}/hang")

    def call(self) -> int:
        return int(self.pool.request("GET", f"{BASE_URL}/ok").status)


class Httpx(Scenario):
    def warm(self) -> None:
        import httpx

        transport = httpx.HTTPTransport(socket_options=USER_SOCKOPTS) if self.respect else None
        # timeout=None: httpx's default 5 s read timeout ends any slow response, dead peer
        # or not; applications that long-poll or stream turn it off, and then they hang.
        timeout = httpx.Timeout(10.0, read=self.app_timeout) if self.app_timeout else None
        self.client = httpx.Client(timeout=timeout, transport=transport)
        self.client.get(f"{BASE_URL}/ok").raise_for_status()

    def block(self) -> Any:
        return self.client.get(f"{BASE_URL}/hang")

    def call(self) -> int:
        resp = self.client.get(f"{BASE_URL}/ok")
        resp.raise_for_status()
        return resp.status_code


def _redis_kwargs(respect: bool, app_timeout: float | None = None) -> dict[str, Any]:
    # socket_timeout=None: an application that uses BLPOP ... 0 must turn redis-py 8's
    # default 5 s read timeout off, or every healthy blocking call would fail too.
    kwargs: dict[str, Any] = {"host": LAB_ADDR, "port": REDIS_PORT, "socket_timeout": app_timeout}
    if respect:
        kwargs["socket_keepalive"] = True
        kwargs["socket_keepalive_options"] = USER_REDIS_OPTS
    return kwargs


def _redis_heartbeat(r: Any) -> Any:
    """redis-py's health_check_interval, as the pool will give it and on its idle connections."""
    pool = r.connection_pool
    seen = {"pool": pool.connection_kwargs.get("health_check_interval")}
    for i, conn in enumerate(getattr(pool, "_available_connections", [])):
        seen[f"conn{i}"] = getattr(conn, "health_check_interval", None)
    return seen if any(seen.values()) else None


class RedisSync(Scenario):
    def warm(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # retries off: measure the dead connection, not a reconnect to a dead host.
        self.r = redis.Redis(retry=Retry(NoBackoff(), 0), **_redis_kwargs(self.respect, self.app_timeout))
        self.r.ping()

    def block(self) -> Any:
        return self.r.blpop([NEVER_KEY], timeout=0)

    def call(self) -> Any:
        return self.r.get(NEVER_KEY)

    def heartbeat(self) -> Any:
        return _redis_heartbeat(self.r)


class RedisAsync(Scenario):
    is_async = True

    async def warm(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.r = redis.asyncio.Redis(
            retry=Retry(NoBackoff(), 0), **_redis_kwargs(self.respect, self.app_timeout)
        )
        await self.r.ping()

    async def block(self) -> Any:
        return await self.r.blpop([NEVER_KEY], timeout=0)

    async def call(self) -> Any:
        return await self.r.get(NEVER_KEY)

    def heartbeat(self) -> Any:
        return _redis_heartbeat(self.r)


def _pg_kwargs(respect: bool, app_timeout: float | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"autocommit": True}
    if respect:
        kwargs.update(USER_LIBPQ_OPTS)
    if app_timeout:
        # libpq has no client-side read timeout: what a sync application can set is
        # statement_timeout, which the server enforces (the backend, frozen here, itself).
        kwargs["options"] = f"-c statement_timeout={int(app_timeout * 1000)}"
    return kwargs


class PsycopgSync(Scenario):
    def warm(self) -> None:
        import psycopg

        self.conn = psycopg.connect(PG_CONNINFO, **_pg_kwargs(self.respect, self.app_timeout))
        self.conn.execute("SELECT 1").fetchone()

    def block(self) -> Any:
        return self.conn.execute("SELECT pg_sleep(3600)").fetchone()

    def call(self) -> Any:
        return self.conn.execute("SELECT 1").fetchone()


class PsycopgAsync(Scenario):
    is_async = True

    async def warm(self) -> None:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(PG_CONNINFO, **_pg_kwargs(self.respect))
        await (await self.conn.execute("SELECT 1")).fetchone()

    async def block(self) -> Any:
        return await (await self.conn.execute("SELECT pg_sleep(3600)")).fetchone()

    async def call(self) -> Any:
        # asyncio bounds the call client-side (app_timeout); psycopg then cancels the query
        # and waits up to 5 s for the server to end it before closing the connection.
        async def select_1() -> Any:
            return await (await self.conn.execute("SELECT 1")).fetchone()

        return await asyncio.wait_for(select_1(), self.app_timeout)


class PsycopgPool(Scenario):
    def warm(self) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(
            PG_CONNINFO,
            kwargs=_pg_kwargs(self.respect, self.app_timeout),
            min_size=1,
            max_size=1,
            open=False,
        )
        self.pool.open(wait=True, timeout=15)
        with self.pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def block(self) -> Any:
        with self.pool.connection() as conn:
            return conn.execute("SELECT pg_sleep(3600)").fetchone()

    def call(self) -> Any:
        with self.pool.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    def heartbeat(self) -> Any:
        # psycopg_pool's check callback (None by default): what a heartbeat would set.
        check = getattr(self.pool, "_check", None)
        return repr(check) if check else None


class Psycopg2(Scenario):
    def warm(self) -> None:
        import psycopg2

        self.conn = psycopg2.connect(PG_CONNINFO, **(USER_LIBPQ_OPTS if self.respect else {}))
        self.conn.autocommit = True
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    def block(self) -> Any:
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(3600)")
            return cursor.fetchone()


class Mysqlclient(Scenario):
    def warm(self) -> None:
        import MySQLdb

        # No read timeout (mysqlclient's default): a long query waits as long as it takes.
        kwargs: dict[str, Any] = {"read_timeout": int(self.app_timeout)} if self.app_timeout else {}
        self.conn = MySQLdb.connect(
            host=LAB_ADDR, port=MARIADB_PORT, user="kplab", connect_timeout=10, **kwargs
        )
        if self.respect:
            # mysqlclient has no keepalive option: an application sets them on its socket,
            # after connect, so over what kapatch wrote. It sets its user timeout too (its
            # own bound): a user timeout left from before would cut its probes short.
            with socket.socket(fileno=os.dup(self.conn.fileno())) as sock:
                for level, opt, val in USER_SOCKOPTS:
                    sock.setsockopt(level, opt, val)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_BOUND * 1000)
        cursor = self.conn.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchone()

    def block(self) -> Any:
        cursor = self.conn.cursor()
        cursor.execute("SELECT SLEEP(3600)")
        return cursor.fetchone()

    def call(self) -> Any:
        cursor = self.conn.cursor()
        cursor.execute("SELECT 1")
        return cursor.fetchone()


# The application's own gRPC keepalive in the respect situation: the same 5 + 1 x 3 = 8 s.
USER_GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", USER_IDLE * 1000),
    ("grpc.keepalive_timeout_ms", USER_INTERVAL * USER_COUNT * 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
GRPC_TARGET = f"{LAB_ADDR}:{GRPC_PORT}"


def _bytes(data: bytes) -> bytes:
    return data


def _grpc_heartbeat() -> Any:
    # Channel options are not readable back from a channel; HTTP/2 PINGs are the kapatch
    # grpc adapter's translation of the policy, so they are there when kapatch is loaded.
    return "HTTP/2 PINGs (kapatch grpc adapter)" if "kapatch" in sys.modules else None


class GrpcSync(Scenario):
    def warm(self) -> None:
        import grpc

        self.channel = grpc.insecure_channel(GRPC_TARGET, options=USER_GRPC_OPTIONS if self.respect else None)
        self.ok = self.channel.unary_unary("/lab.Lab/Ok", _bytes, _bytes)
        self.hang = self.channel.unary_unary("/lab.Lab/Hang", _bytes, _bytes)
        self.ok(b"")

    def block(self) -> Any:
        return self.hang(b"")  # no deadline: the call waits as long as the connection lives

    def call(self) -> Any:
        return self.ok(b"", timeout=self.app_timeout)  # app-timeout: the call's deadline

    def heartbeat(self) -> Any:
        return _grpc_heartbeat()


class GrpcAio(Scenario):
    is_async = True

    async def warm(self) -> None:
        import grpc.aio

        options = USER_GRPC_OPTIONS if self.respect else None
        self.channel = grpc.aio.insecure_channel(GRPC_TARGET, options=options)
        self.ok = self.channel.unary_unary("/lab.Lab/Ok", _bytes, _bytes)
        self.hang = self.channel.unary_unary("/lab.Lab/Hang", _bytes, _bytes)
        await self.ok(b"")

    async def block(self) -> Any:
        return await self.hang(b"")

    async def call(self) -> Any:
        return await self.ok(b"", timeout=self.app_timeout)

    def heartbeat(self) -> Any:
        return _grpc_heartbeat()


class HttpxAsync(Scenario):
    is_async = True

    async def warm(self) -> None:
        import httpx

        transport = httpx.AsyncHTTPTransport(socket_options=USER_SOCKOPTS) if self.respect else None
        self.client = httpx.AsyncClient(timeout=None, transport=transport)  # as Httpx: no timeout
        (await self.client.get(f"{BASE_URL}/ok")).raise_for_status()

    async def block(self) -> Any:
        return await self.client.get(f"{BASE_URL}/hang")


# The peer of the inbound scenario: runs inside the lab namespace, connects to the server
# on this host, says hello, then reads nothing and never answers (its kernel still ACKs).
_INBOUND_PEER = """
import ctypes, signal, socket, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with the server process
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(b"hello\\n")
while True:
    time.sleep(3600)
"""


class InboundServer(Scenario):
    """The server side: a stdlib listener on this host; its client, in the lab namespace,
    is the one that vanishes. kapatch reaches the accepted socket only through the listener
    (KAPATCH_INBOUND=1): the runner adds it for this client."""

    def warm(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.respect:  # the application configured its listener itself
            for level, opt, val in USER_SOCKOPTS:
                self.listener.setsockopt(level, opt, val)
        self.listener.bind((HOST_ADDR, 0))
        self.listener.listen(1)
        port = self.listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
        self.peer = subprocess.Popen(
            ["ip", "netns", "exec", NS_NAME, sys.executable, "-c", _INBOUND_PEER, HOST_ADDR, str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        self.listener.settimeout(15)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(None)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self.conn.recv(64)
            if not chunk:
                raise ConnectionError("the peer closed before hello")
            buf += chunk

    def block(self) -> bytes:
        self.conn.sendall(b"wait\n")  # read by the peer's kernel, never answered
        return self.conn.recv(65536)


CLIENTS: dict[str, type[Scenario]] = {
    "raw-socket": RawSocket,
    "asyncio-streams": AsyncioStreams,
    "requests": Requests,
    "urllib3": Urllib3,
    "httpx": Httpx,
    "redis-sync": RedisSync,
    "redis-asyncio": RedisAsync,
    "psycopg-sync": PsycopgSync,
    "psycopg-async": PsycopgAsync,
    "psycopg-pool": PsycopgPool,
    "psycopg2": Psycopg2,
    "mysqlclient": Mysqlclient,
    "grpc": GrpcSync,
    "grpc-aio": GrpcAio,
    # the same scenarios under other runtimes (RUNTIMES): gevent's socket class, uvloop's libuv
    "gevent-raw-socket": RawSocket,
    "gevent-requests": Requests,
    "gevent-redis": RedisSync,
    "uvloop-streams": AsyncioStreams,
    "uvloop-redis": RedisAsync,
    "uvloop-httpx": HttpxAsync,
    "inbound-server": InboundServer,
}
MARIADB_CLIENTS = frozenset({"mysqlclient"})
"""Clients that need the lab's MariaDB (started only when one of them runs)."""
RUNTIMES = {name: name.split("-", 1)[0] for name in CLIENTS if name.startswith(("gevent-", "uvloop-"))}
"""Client -> the runtime it runs under: ``gevent`` (``monkey.patch_all()`` first) or ``uvloop``."""
INBOUND_CLIENTS = frozenset({"inbound-server"})
"""Clients whose connection is an accepted one: the runner adds ``KAPATCH_INBOUND=1``."""

HUNG_PEER_CLIENTS: dict[str, str] = {
    "raw-socket": "http",
    "asyncio-streams": "http",
    "requests": "http",
    "urllib3": "http",
    "httpx": "http",
    "redis-sync": "redis",
    "redis-asyncio": "redis",
    "psycopg-sync": "postgres",
    "psycopg-async": "postgres",
    "psycopg-pool": "postgres",
    "mysqlclient": "mariadb",
    "grpc": "grpc",
    "grpc-aio": "grpc",
}
"""The hung-peer clients (those with a `call`), and the lab server each one talks to."""

HEARTBEAT_MECHANISMS: dict[str, str] = {
    "redis-sync": "redis-py health_check_interval (PING before a command)",
    "redis-asyncio": "redis-py health_check_interval (PING before a command)",
    "psycopg-pool": "psycopg_pool check (a query before handing out a connection)",
    "grpc": "HTTP/2 PING",
    "grpc-aio": "HTTP/2 PING",
}
"""Clients whose library has an application-level heartbeat; the others have none."""

APP_TIMEOUTS: dict[str, str] = {
    "raw-socket": "sock.settimeout(3)",
    "asyncio-streams": "asyncio.wait_for(reader.read(), 3)",
    "requests": "get(timeout=(10, 3))",
    "urllib3": "PoolManager(timeout=Timeout(read=3))",
    "httpx": "Client(timeout=Timeout(10, read=3))",
    "redis-sync": "socket_timeout=3",
    "redis-asyncio": "socket_timeout=3",
    "psycopg-sync": "options='-c statement_timeout=3000' (libpq has no client-side read timeout)",
    "psycopg-async": "asyncio.wait_for(execute(), 3)",
    "psycopg-pool": "options='-c statement_timeout=3000' (libpq has no client-side read timeout)",
    "mysqlclient": "connect(read_timeout=3)",
    "grpc": "call(timeout=3) (deadline)",
    "grpc-aio": "call(timeout=3) (deadline)",
}
"""The read timeout each hung-peer client sets in the app-timeout layer, in its own API."""


# ---------------------------------------------------------------- driver


def _die_with_parent() -> None:
    """Never outlive the runner: SIGKILL when the parent dies, and a hard lifetime."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    timer = threading.Timer(MAX_LIFETIME, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def _finish(code: int = 0) -> None:
    sys.stdout.flush()
    os._exit(code)  # skip library clean-up that could itself wait on the dead host


def _describe_result(result: Any) -> str:
    return repr(result)[:200]


def _heartbeat_of(sc: Scenario) -> Any:
    try:
        return sc.heartbeat()
    except Exception as exc:  # introspection of library internals: report, never fail
        return f"unreadable: {exc!r}"


def run_sync(sc: Scenario, situation: str) -> None:
    try:
        sc.warm()
    except BaseException as exc:
        emit("error", phase="setup", **describe_error(exc))
        _finish(2)
    emit("ready", opts=lab_socket_options(), heartbeat=_heartbeat_of(sc))
    if situation == "hung-peer":
        sys.stdin.readline()  # the runner has frozen the server
        time.sleep(IDLE_BEFORE_CALL)
        emit("sent")
    elif situation == "user-timeout":
        sys.stdin.readline()
        emit("sent")
    else:
        emit("blocking")
    try:
        result = sc.call() if situation == "hung-peer" else sc.block()
    except BaseException as exc:
        emit("error", phase="block", **describe_error(exc))
        _finish(0)
    emit("returned", result=_describe_result(result))
    _finish(0)


async def run_async(sc: Scenario, situation: str) -> None:
    try:
        await sc.warm()
    except BaseException as exc:
        emit("error", phase="setup", **describe_error(exc))
        _finish(2)
    emit("ready", opts=lab_socket_options(), heartbeat=_heartbeat_of(sc))
    if situation in ("user-timeout", "hung-peer"):
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if situation == "hung-peer":  # the server is frozen; idle past the heartbeat interval
            await asyncio.sleep(IDLE_BEFORE_CALL)
        emit("sent")
    else:
        emit("blocking")
    try:
        result = await (sc.call() if situation == "hung-peer" else sc.block())
    except BaseException as exc:
        emit("error", phase="block", **describe_error(exc))
        _finish(0)
    emit("returned", result=_describe_result(result))
    _finish(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    hung = len(args) == 3 and args[1] == "hung-peer" and args[0] in HUNG_PEER_CLIENTS and args[2] in LAYERS
    if not hung and (len(args) != 2 or args[0] not in CLIENTS or args[1] not in SITUATIONS[:-1]):
        sys.exit(f"usage: python -m integrations.client {{{','.join(CLIENTS)}}} "
                 f"{{{','.join(SITUATIONS[:-1])}}}\n"
                 f"       python -m integrations.client {{{','.join(HUNG_PEER_CLIENTS)}}} "
                 f"hung-peer {{{','.join(LAYERS)}}}")  # fmt: skip
    name, situation = args[0], args[1]
    app_timeout = APP_TIMEOUT if hung and args[2] == "app-timeout" else None
    runtime = RUNTIMES.get(name)
    if runtime == "gevent":  # before any other thread or socket, as a gevent application does
        from gevent import monkey

        monkey.patch_all()
    _die_with_parent()
    emit("start", pid=os.getpid(), kapatch_loaded="kapatch" in sys.modules)
    sc = CLIENTS[name](respect=situation == "respect", app_timeout=app_timeout)
    if sc.is_async and runtime == "uvloop":
        import uvloop

        uvloop.run(run_async(sc, situation))
    elif sc.is_async:
        asyncio.run(run_async(sc, situation))
    else:
        run_sync(sc, situation)


if __name__ == "__main__":
    main()
