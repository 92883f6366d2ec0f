"""One lab client in its own process: `python -m integrations.client CLIENT SITUATION`.

The client never imports kapatch: with kapatch, the runner only sets KAPATCH_* variables in
its environment. It prints JSON lines on stdout, each with `ev` and a CLOCK_MONOTONIC time
`t` (system-wide on Linux, so the runner compares it with its own clock):

  start     imports done; `kapatch_loaded` says whether kapatch was imported at start-up
  ready     connection established and proven by one answered request; `opts` are the
            keepalive options the kernel reports on every socket to the lab host
  blocking  (keepalive, respect) about to wait on a request that is never answered
  sent      (user-timeout) after the runner's "go" on stdin, once the cut is in place:
            about to send a request that is never acknowledged
  error     the error the application saw: type, message, errno (from the cause chain)
  returned  the blocking call returned (the server answered or closed: not expected)

Situations: `keepalive` (idle connection waiting on a response, then the cut),
`user-timeout` (cut first, then data sent and never acknowledged), `respect` (like
keepalive, but the application set its own keepalive values through the client's own API).
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

SITUATIONS = ("keepalive", "user-timeout", "respect")

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
    one answered request; `block` sends a request that is never answered and waits."""

    is_async = False

    def __init__(self, respect: bool) -> None:
        self.respect = respect

    def warm(self) -> Any:
        raise NotImplementedError

    def block(self) -> Any:
        raise NotImplementedError


class RawSocket(Scenario):
    def warm(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.respect:
            for level, opt, val in USER_SOCKOPTS:
                self.sock.setsockopt(level, opt, val)
        self.sock.connect((LAB_ADDR, HTTP_PORT))
        self.sock.sendall(http_request("/ok"))
        read_http_ok(lambda: self.sock.recv(4096))

    def block(self) -> bytes:
        self.sock.sendall(http_request("/hang"))
        return self.sock.recv(65536)


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
        self.writer.write(http_request("/ok"))
        await self.writer.drain()
        buf = b""
        while not buf.endswith(b"ok\n"):
            chunk = await self.reader.read(4096)
            if not chunk:
                raise ConnectionError("server closed during /ok")
            buf += chunk

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


class Urllib3(Scenario):
    def warm(self) -> None:
        import urllib3
        from urllib3.connection import HTTPConnection

        kwargs: dict[str, Any] = {}
        if self.respect:
            kwargs["socket_options"] = [*HTTPConnection.default_socket_options, *USER_SOCKOPTS]
        # retries=False: measure the dead connection, not a reconnect to a dead host.
        self.pool = urllib3.PoolManager(retries=False, **kwargs)
        self.pool.request("GET", f"{BASE_URL}/ok")

    def block(self) -> Any:
        return self.pool.request("GET", f"{BASE_URL}/hang")


class Httpx(Scenario):
    def warm(self) -> None:
        import httpx

        transport = httpx.HTTPTransport(socket_options=USER_SOCKOPTS) if self.respect else None
        # timeout=None: httpx's default 5 s read timeout ends any slow response, dead peer
        # or not; applications that long-poll or stream turn it off, and then they hang.
        self.client = httpx.Client(timeout=None, transport=transport)
        self.client.get(f"{BASE_URL}/ok").raise_for_status()

    def block(self) -> Any:
        return self.client.get(f"{BASE_URL}/hang")


def _redis_kwargs(respect: bool) -> dict[str, Any]:
    # socket_timeout=None: an application that uses BLPOP ... 0 must turn redis-py 8's
    # default 5 s read timeout off, or every healthy blocking call would fail too.
    kwargs: dict[str, Any] = {"host": LAB_ADDR, "port": REDIS_PORT, "socket_timeout": None}
    if respect:
        kwargs["socket_keepalive"] = True
        kwargs["socket_keepalive_options"] = USER_REDIS_OPTS
    return kwargs


class RedisSync(Scenario):
    def warm(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # retries off: measure the dead connection, not a reconnect to a dead host.
        self.r = redis.Redis(retry=Retry(NoBackoff(), 0), **_redis_kwargs(self.respect))
        self.r.ping()

    def block(self) -> Any:
        return self.r.blpop([NEVER_KEY], timeout=0)


class RedisAsync(Scenario):
    is_async = True

    async def warm(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.r = redis.asyncio.Redis(retry=Retry(NoBackoff(), 0), **_redis_kwargs(self.respect))
        await self.r.ping()

    async def block(self) -> Any:
        return await self.r.blpop([NEVER_KEY], timeout=0)


def _pg_kwargs(respect: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"autocommit": True}
    if respect:
        kwargs.update(USER_LIBPQ_OPTS)
    return kwargs


class PsycopgSync(Scenario):
    def warm(self) -> None:
        import psycopg

        self.conn = psycopg.connect(PG_CONNINFO, **_pg_kwargs(self.respect))
        self.conn.execute("SELECT 1").fetchone()

    def block(self) -> Any:
        return self.conn.execute("SELECT pg_sleep(3600)").fetchone()


class PsycopgAsync(Scenario):
    is_async = True

    async def warm(self) -> None:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(PG_CONNINFO, **_pg_kwargs(self.respect))
        await (await self.conn.execute("SELECT 1")).fetchone()

    async def block(self) -> Any:
        return await (await self.conn.execute("SELECT pg_sleep(3600)")).fetchone()


class PsycopgPool(Scenario):
    def warm(self) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(
            PG_CONNINFO, kwargs=_pg_kwargs(self.respect), min_size=1, max_size=1, open=False
        )
        self.pool.open(wait=True, timeout=15)
        with self.pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def block(self) -> Any:
        with self.pool.connection() as conn:
            return conn.execute("SELECT pg_sleep(3600)").fetchone()


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
        self.conn = MySQLdb.connect(host=LAB_ADDR, port=MARIADB_PORT, user="kplab", connect_timeout=10)
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


class GrpcSync(Scenario):
    def warm(self) -> None:
        import grpc

        self.channel = grpc.insecure_channel(GRPC_TARGET, options=USER_GRPC_OPTIONS if self.respect else None)
        self.ok = self.channel.unary_unary("/lab.Lab/Ok", _bytes, _bytes)
        self.hang = self.channel.unary_unary("/lab.Lab/Hang", _bytes, _bytes)
        self.ok(b"")

    def block(self) -> Any:
        return self.hang(b"")  # no deadline: the call waits as long as the connection lives


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


def run_sync(sc: Scenario, situation: str) -> None:
    try:
        sc.warm()
    except BaseException as exc:
        emit("error", phase="setup", **describe_error(exc))
        _finish(2)
    emit("ready", opts=lab_socket_options())
    if situation == "user-timeout":
        sys.stdin.readline()
        emit("sent")
    else:
        emit("blocking")
    try:
        result = sc.block()
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
    emit("ready", opts=lab_socket_options())
    if situation == "user-timeout":
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        emit("sent")
    else:
        emit("blocking")
    try:
        result = await sc.block()
    except BaseException as exc:
        emit("error", phase="block", **describe_error(exc))
        _finish(0)
    emit("returned", result=_describe_result(result))
    _finish(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in CLIENTS or args[1] not in SITUATIONS:
        sys.exit(f"usage: python -m integrations.client {{{','.join(CLIENTS)}}} "
                 f"{{{','.join(SITUATIONS)}}}")  # fmt: skip
    name, situation = args
    runtime = RUNTIMES.get(name)
    if runtime == "gevent":  # before any other thread or socket, as a gevent application does
        from gevent import monkey

        monkey.patch_all()
    _die_with_parent()
    emit("start", pid=os.getpid(), kapatch_loaded="kapatch" in sys.modules)
    sc = CLIENTS[name](respect=situation == "respect")
    if sc.is_async and runtime == "uvloop":
        import uvloop

        uvloop.run(run_async(sc, situation))
    elif sc.is_async:
        asyncio.run(run_async(sc, situation))
    else:
        run_sync(sc, situation)


if __name__ == "__main__":
    main()
