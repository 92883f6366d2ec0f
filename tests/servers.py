"""Private, real servers for the test suite, started and stopped by the tests themselves.

Every helper starts its own server on a free loopback port (never the machine's services
on 6379/5432), waits until it really answers, and returns a small frozen handle with
``host``, ``port`` and ``pid``. ``handle.stop()`` is idempotent; handles are also context
managers. Processes are stopped by their own pid, nothing else is ever signalled.

Why no pytest-redis / pytest-postgresql (both were tried here):

* pytest-postgresql cannot run as root, and CI runs as root: its executor calls
  ``pg_ctl initdb`` / ``pg_ctl start`` as the current user and has no way to switch
  user, so it fails with "pg_ctl: cannot be run as root".
* pytest-redis works, but its pytest11 plugin is auto-loaded in every pytest run and
  imports redis-py (and ``redis.asyncio``) at pytest start-up, before any test could call
  ``kapatch.install()``: that defeats the "library imported after install()" tests of an
  import-hook library. Its executor also uses one ``host`` both as the bind address and
  as the readiness probe (no dual-stack bind), and its ``save=""`` omits ``--save`` so
  Redis' default RDB snapshots stay on. It adds four dependencies for ~40 lines here.

This module imports no client library (redis, psycopg, urllib3): readiness is checked
with raw sockets and ``pg_isready``, so tests keep control of when clients are imported.
The HTTP proxy's upstream connections and the Redis readiness probe connect through
``_socket.socket`` (not ``socket.socket.connect``), so a process-wide connect hook under
test (kapatch's socket adapter) never sees nor counts them.
"""

from __future__ import annotations

import _socket
import atexit
import contextlib
import functools
import glob
import http.client
import ipaddress
import os
import pwd
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import types
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, TypeVar

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"
SYSTEM_PORTS = frozenset({6379, 5432, 3306})
"""Ports of the machine's own services: never handed out by :func:`free_port`."""
MAX_SLOW_SECONDS = 30.0
"""Upper bound of ``/slow?seconds=N`` on the test HTTP server."""
START_ATTEMPTS = 5
"""How many free ports a process server tries before giving up (port collisions)."""

_Stopper = Callable[[], None]
_H = TypeVar("_H", bound="_Handle")


class ServerStartError(RuntimeError):
    """A private test server did not start; the message carries its log tail."""


# --------------------------------------------------------------------------- handles


@dataclass(frozen=True)
class _Handle:
    host: str
    port: int
    pid: int
    _stopper: _Stopper = field(repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        self._stopper()

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class RedisServer(_Handle):
    """A private ``redis-server`` listening on 127.0.0.1 (and ::1 when ``ipv6``)."""

    ipv6: bool
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@dataclass(frozen=True)
class PostgresServer(_Handle):
    """A private PostgreSQL cluster, trust auth, on 127.0.0.1 (and ::1 when ``ipv6``)."""

    ipv6: bool
    socket_dir: Path
    version: int
    user: str = "postgres"
    dbname: str = "postgres"

    @property
    def dsn(self) -> str:
        """libpq conninfo string over TCP (``host=... port=... user=... dbname=...``)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{_url_host(self.host)}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class MariadbServer(_Handle):
    """A private MariaDB server on 127.0.0.1: user ``root`` without a password over TCP."""

    socket_path: Path
    user: str = "root"

    @property
    def kwargs(self) -> dict[str, object]:
        """``MySQLdb.connect(**server.kwargs)`` over TCP."""
        return {"host": self.host, "port": self.port, "user": self.user}

    @property
    def url(self) -> str:
        """SQLAlchemy URL for the mysqlclient driver."""
        return f"mysql+mysqldb://{self.user}@{self.host}:{self.port}/mysql"


@dataclass(frozen=True)
class HttpServer(_Handle):
    """An in-process HTTP/1.1 server: ``/ok`` and ``/slow?seconds=N``."""

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:8123``."""
        return f"http://{_url_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class HttpsServer(HttpServer):
    """The same server behind TLS, with a fresh self-signed certificate.

    ``ca_file`` is that certificate (subjectAltName 127.0.0.1, ::1, localhost): pass it
    as ``ca_certs=`` (urllib3) or ``verify=`` (requests).
    """

    ca_file: Path

    @property
    def url(self) -> str:
        return f"https://{_url_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class HttpProxy(_Handle):
    """An in-process HTTP forward proxy (absolute-URI requests and ``CONNECT``)."""

    log: ProxyLog = field(compare=False)

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"


class ProxyLog:
    """Thread-safe record of what the proxy was asked to do: ``(method, target)`` pairs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str]] = []

    def add(self, method: str, target: str) -> None:
        with self._lock:
            self._entries.append((method, target))

    @property
    def entries(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# --------------------------------------------------------------------------- ports


def ipv6_loopback_available() -> bool:
    """True when a socket can be bound on ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK_V6, 0))
    except OSError:
        return False
    return True


def free_port(*, ipv6: bool | None = None, attempts: int = 50, below: int | None = None) -> int:
    """A TCP port free on 127.0.0.1 (and on ::1 when ``ipv6``; default: if available), under *below*.

    Found by binding port 0; never one of :data:`SYSTEM_PORTS`. The port is released
    before returning, so callers must still retry on a collision.
    """
    if ipv6 is None:
        ipv6 = ipv6_loopback_available()
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
            s4.bind((LOOPBACK_V4, 0))
            port: int = s4.getsockname()[1]
            if port in SYSTEM_PORTS or (below is not None and port >= below):
                continue
            if not ipv6:
                return port
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s6.bind((LOOPBACK_V6, port))
            except OSError:
                continue
            return port
    raise ServerStartError(f"no free loopback port found in {attempts} attempts")


# --------------------------------------------------------------------------- processes


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Signal ``proc`` (by its own pid) and wait; escalate to SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)


_live_stoppers: set[_Stopper] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort: stop servers whose owner forgot to (fixtures always stop theirs)."""
    with _live_lock:
        leftovers = list(_live_stoppers)
    for stopper in leftovers:
        with contextlib.suppress(Exception):
            stopper()


def _once(func: _Stopper) -> _Stopper:
    """Make ``func`` idempotent and register it for :func:`_stop_leftovers`."""
    lock = threading.Lock()
    done = False

    def wrapper() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
            with _live_lock:
                _live_stoppers.discard(wrapper)
            func()

    with _live_lock:
        _live_stoppers.add(wrapper)
    return wrapper


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll ``ready`` until true; False if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- redis


def _redis_ping(host: str, port: int) -> bool:
    try:
        with _connect_unobserved(host, port, timeout=1.0) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(*, executable: str | None = None, startup_timeout: float = 30.0) -> RedisServer:
    """Start a private ``redis-server``: no persistence, loopback only, free port.

    Runs ``redis-server --port N --bind 127.0.0.1 [::1] --save "" --appendonly no`` with
    its dir, log and no unix socket in a fresh temporary directory (removed on stop).
    Ready when it answers ``PING`` on 127.0.0.1.
    """
    exe = executable or shutil.which("redis-server")
    if exe is None:
        raise ServerStartError("redis-server not found: run scripts/install-system-deps")
    ipv6 = ipv6_loopback_available()
    workdir = Path(tempfile.mkdtemp(prefix="kapatch-redis-"))
    log = workdir / "redis.log"
    for _ in range(START_ATTEMPTS):
        port = free_port(ipv6=ipv6)
        bind = [LOOPBACK_V4, LOOPBACK_V6] if ipv6 else [LOOPBACK_V4]
        command = [
            exe,
            "--port", str(port),
            "--bind", *bind,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(log),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--timeout", "0",
        ]  # fmt: skip
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=workdir)
        if _wait_until(functools.partial(_redis_ping, LOOPBACK_V4, port), proc, startup_timeout):
            break
        _terminate(proc, signal.SIGTERM, 5)
    else:
        tail = _log_tail(log)
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerStartError(f"redis-server did not start:\n{tail}")

    def stop() -> None:
        _terminate(proc, signal.SIGTERM, 10)
        shutil.rmtree(workdir, ignore_errors=True)

    return RedisServer(
        host=LOOPBACK_V4,
        port=port,
        pid=proc.pid,
        _stopper=_once(stop),
        ipv6=ipv6,
        workdir=workdir,
    )


# --------------------------------------------------------------------------- postgres


def postgres_bindir() -> Path:
    """Directory of the newest installed PostgreSQL server binaries.

    Debian layout ``/usr/lib/postgresql/<major>/bin`` first, else ``postgres`` on PATH.
    """
    found: list[tuple[int, Path]] = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        match = re.search(r"/postgresql/(\d+)/bin/postgres$", candidate)
        if match:
            found.append((int(match.group(1)), Path(candidate).parent))
    if found:
        return max(found)[1]
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    raise ServerStartError("PostgreSQL server binaries not found: run scripts/install-system-deps")


def _postgres_version(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class _RunAs:
    """Who runs initdb/postgres: ``postgres`` when we are root (postgres refuses root)."""

    uid: int | None
    gid: int | None
    extra_groups: list[int] | None

    @classmethod
    def for_postgres(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls(None, None, None)
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerStartError(
                "running as root but no 'postgres' system user exists "
                "(postgres refuses to run as root): run scripts/install-system-deps"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid, [])

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def _pg_isready(bindir: Path, port: int, socket_dir: Path) -> bool:
    # Over the unix socket: readiness only, and no TCP connection from this process.
    result = subprocess.run(
        [str(bindir / "pg_isready"), "-q", "-h", str(socket_dir), "-p", str(port),
         "-U", "postgres", "-d", "postgres", "-t", "2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    return result.returncode == 0


def start_postgres(*, bindir: Path | None = None, startup_timeout: float = 60.0) -> PostgresServer:
    """Start a private PostgreSQL cluster: trust auth, loopback only, free port.

    ``initdb`` and ``postgres`` run as the ``postgres`` system user when we are root (CI),
    via ``subprocess``'s ``user=``/``group=`` (like ``runuser -u postgres --`` but the
    child *is* the postmaster, so ``pid`` is the server's own pid and stopping it needs no
    process-group tricks); as the current user otherwise. The cluster lives in a fresh
    ``/tmp/kapatch-pg-*`` directory owned by that user (pytest's tmp dirs are mode 0700
    under root and not reachable by ``postgres``), which also holds the unix socket and
    the log; it is removed on stop. Fast, non-durable settings (fsync off).
    """
    bindir = bindir or postgres_bindir()
    version = _postgres_version(bindir)
    run_as = _RunAs.for_postgres()
    ipv6 = ipv6_loopback_available()
    base = Path(tempfile.mkdtemp(prefix="kapatch-pg-"))
    run_as.own(base)
    datadir = base / "data"
    log = base / "postgres.log"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)

    def cleanup() -> None:
        shutil.rmtree(base, ignore_errors=True)

    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
            cwd=base, env=env, capture_output=True, text=True, check=True,
            timeout=startup_timeout,
            user=run_as.uid, group=run_as.gid, extra_groups=run_as.extra_groups,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        cleanup()
        raise ServerStartError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from exc

    listen = f"{LOOPBACK_V4},{LOOPBACK_V6}" if ipv6 else LOOPBACK_V4
    for _ in range(START_ATTEMPTS):
        port = free_port(ipv6=ipv6)
        command = [
            str(bindir / "postgres"), "-D", str(datadir), "-p", str(port),
            "-c", f"listen_addresses={listen}",
            "-c", f"unix_socket_directories={base}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "logging_collector=off", "-c", "log_destination=stderr",
        ]  # fmt: skip
        with log.open("ab") as log_file:
            # user/group/extra_groups: the child drops to the postgres user itself, so
            # proc.pid is the postmaster's own pid (no runuser/su process in between).
            proc = subprocess.Popen(
                command,
                cwd=base,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=run_as.extra_groups,
            )
        if _wait_until(functools.partial(_pg_isready, bindir, port, base), proc, startup_timeout):
            break
        _terminate(proc, signal.SIGINT, 10)
    else:
        tail = _log_tail(log)
        cleanup()
        raise ServerStartError(f"postgres did not start:\n{tail}")

    def stop() -> None:
        # SIGINT = "fast" shutdown: disconnect clients, shut down cleanly.
        _terminate(proc, signal.SIGINT, 15)
        cleanup()

    return PostgresServer(
        host=LOOPBACK_V4,
        port=port,
        pid=proc.pid,
        _stopper=_once(stop),
        ipv6=ipv6,
        socket_dir=base,
        version=version,
    )


# --------------------------------------------------------------------------- mariadb


def mariadb_binaries() -> tuple[Path, Path]:
    """(mariadbd, mariadb-install-db): the server and the datadir initialiser."""
    server = shutil.which("mariadbd") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/libexec/mariadbd") if os.access(p, os.X_OK)), None
    )
    install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if server is None or install_db is None:
        raise ServerStartError("MariaDB server binaries not found: run scripts/install-system-deps")
    return Path(server), Path(install_db)


def _mariadb_greets(host: str, port: int) -> bool:
    """The server's first packet is its handshake: protocol version 10 after the 4-byte header."""
    try:
        with _connect_unobserved(host, port, timeout=1.0) as s:
            greeting = s.recv(128)
    except OSError:
        return False
    return len(greeting) > 4 and greeting[4] == 10


def start_mariadb(*, startup_timeout: float = 60.0) -> MariadbServer:
    """Start a private MariaDB server: loopback only, free port, root without a password.

    ``mariadb-install-db --no-defaults`` makes a fresh datadir in a ``/tmp/kapatch-mariadb-*``
    directory (``--auth-root-authentication-method=normal``: root@127.0.0.1 with no password),
    then ``mariadbd --no-defaults`` runs on it as the current user (``--user=root`` when we are
    root; mariadbd refuses root otherwise), its Unix socket and log in the same directory,
    removed on stop. Ready when it sends its handshake on 127.0.0.1. No binary log, a small
    buffer pool.
    """
    server, install_db = mariadb_binaries()
    user = pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="kapatch-mariadb-"))
    datadir, sock, log = base / "data", base / "mariadb.sock", base / "mariadb.log"

    def cleanup() -> None:
        shutil.rmtree(base, ignore_errors=True)

    try:
        subprocess.run(
            [str(install_db), "--no-defaults", f"--datadir={datadir}", f"--user={user}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
            cwd=base, capture_output=True, text=True, check=True, timeout=startup_timeout,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        cleanup()
        raise ServerStartError(f"mariadb-install-db failed:\n{exc.stdout}\n{exc.stderr}") from exc

    for _ in range(START_ATTEMPTS):
        port = free_port(ipv6=False)
        command = [
            str(server), "--no-defaults", f"--datadir={datadir}", f"--socket={sock}",
            f"--port={port}", f"--bind-address={LOOPBACK_V4}", f"--user={user}",
            f"--pid-file={base / 'mariadb.pid'}", f"--log-error={log}", f"--tmpdir={base}",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if _wait_until(functools.partial(_mariadb_greets, LOOPBACK_V4, port), proc, startup_timeout):
            break
        _terminate(proc, signal.SIGTERM, 15)
    else:
        tail = _log_tail(log)
        cleanup()
        raise ServerStartError(f"mariadbd did not start:\n{tail}")

    def stop() -> None:
        _terminate(proc, signal.SIGTERM, 20)  # SIGTERM: a normal shutdown
        cleanup()

    return MariadbServer(host=LOOPBACK_V4, port=port, pid=proc.pid, _stopper=_once(stop), socket_path=sock)


# --------------------------------------------------------------------------- http


class _TrackingServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its open connections, to close them on stop."""

    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._tls = tls
        super().__init__(address, handler)

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if self._tls is None:
            super().finish_request(request, client_address)
            return
        # TLS handshake in the handler thread (not in the accept loop), bounded in time.
        request.settimeout(10)
        tls_sock = self._tls.wrap_socket(request, server_side=True)
        tls_sock.settimeout(None)
        self.track(tls_sock)
        try:
            super().finish_request(tls_sock, client_address)
        finally:
            self.untrack(tls_sock)
            with contextlib.suppress(OSError):
                tls_sock.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would do a reverse DNS lookup (getfqdn): skip it.
        super(ThreadingHTTPServer, self).server_bind()  # socketserver.TCPServer's
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def track(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def close_all(self) -> None:
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _serve(server: _TrackingServer, name: str) -> tuple[int, _Stopper]:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.close_all()
        server.server_close()
        thread.join(timeout=10)

    return int(server.server_address[1]), _once(stop)


class _OkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kapatch-test-http/1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, *, head: bool) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/ok":
            self._reply(200, b"ok\n", head=head)
        elif parsed.path == "/slow":
            query = urllib.parse.parse_qs(parsed.query)
            try:
                seconds = float(query.get("seconds", ["1"])[0])
            except ValueError:
                self._reply(400, b"bad seconds\n", head=head)
                return
            seconds = min(max(seconds, 0.0), MAX_SLOW_SECONDS)
            time.sleep(seconds)
            self._reply(200, f"slept {seconds:g}\n".encode(), head=head)
        else:
            self._reply(404, b"not found\n", head=head)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


def start_http_server(host: str = LOOPBACK_V4) -> HttpServer:
    """Start an HTTP/1.1 keep-alive server in a daemon thread on ``host`` (port 0).

    ``GET /ok`` -> 200 ``ok\\n``; ``GET /slow?seconds=N`` -> 200 after N s (at most
    :data:`MAX_SLOW_SECONDS`); anything else 404. On stop, open keep-alive connections
    are shut down, so no handler thread outlives the server.
    """
    server = _TrackingServer((host, 0), _OkHandler)
    port, stopper = _serve(server, f"test-http-{host}")
    return HttpServer(host=host, port=port, pid=os.getpid(), _stopper=stopper)


def self_signed_cert(workdir: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1, ::1 and localhost, made with the ``openssl`` CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServerStartError("openssl not found: run scripts/install-system-deps")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "7", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return cert, key


def start_https_server(host: str = LOOPBACK_V4) -> HttpsServer:
    """Like :func:`start_http_server`, behind TLS with a fresh self-signed certificate.

    Needed to drive urllib3's ``HTTPSConnection`` and its ``CONNECT`` tunnel through
    :func:`start_http_proxy` (urllib3 tunnels only ``https://`` targets).
    """
    workdir = Path(tempfile.mkdtemp(prefix="kapatch-tls-"))
    try:
        cert, key = self_signed_cert(workdir)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        server = _TrackingServer((host, 0), _OkHandler, tls=tls)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    port, stop_server = _serve(server, f"test-https-{host}")

    def stop() -> None:
        stop_server()
        shutil.rmtree(workdir, ignore_errors=True)

    return HttpsServer(host=host, port=port, pid=os.getpid(), _stopper=_once(stop), ca_file=cert)


# --------------------------------------------------------------------------- proxy

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_RELAY_CHUNK = 65536
_UPSTREAM_TIMEOUT = MAX_SLOW_SECONDS + 10


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _connect_unobserved(host: str, port: int, timeout: float) -> socket.socket:
    """Connect through ``_socket.socket.connect``, not ``socket.socket.connect``.

    The proxy's own upstream legs are test plumbing: a connect hook installed on
    ``socket.socket`` by the code under test must not see (or count) them.
    """
    last: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        raw = _socket.socket(family, kind, proto)
        raw.settimeout(timeout)
        try:
            raw.connect(addr)
        except OSError as exc:
            raw.close()
            last = exc
            continue
        sock = socket.socket(family, kind, proto, fileno=raw.detach())
        sock.settimeout(timeout)
        return sock
    raise last or OSError(f"cannot connect to {host}:{port}")


class _UnobservedHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        assert self.timeout is None or isinstance(self.timeout, (int, float))
        self.sock = _connect_unobserved(self.host, self.port, self.timeout or _UPSTREAM_TIMEOUT)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kapatch-test-proxy/1"
    server: _TrackingServer
    proxy_log: ClassVar[ProxyLog]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _error(self, status: int, message: str) -> None:
        body = f"{message}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_CONNECT(self) -> None:
        host, _, port_text = self.path.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit() or not _is_loopback(host):
            self._error(403, "proxy: loopback targets only")
            return
        self.proxy_log.add("CONNECT", self.path)
        try:
            upstream = _connect_unobserved(host, int(port_text), _UPSTREAM_TIMEOUT)
        except OSError as exc:
            self._error(502, f"proxy: {exc}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.server.track(upstream)
        try:
            self._relay(self.connection, upstream)
        finally:
            self.server.untrack(upstream)
            upstream.close()
            self.close_connection = True

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> None:
        client.settimeout(None)
        upstream.settimeout(None)
        pair = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select(list(pair), [], [], 1.0)
            for sock in readable:
                try:
                    data = sock.recv(_RELAY_CHUNK)
                except OSError:
                    return
                if not data:
                    return
                try:
                    pair[sock].sendall(data)
                except OSError:
                    return

    def _forward(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        host = target.hostname or ""
        if target.scheme != "http" or not _is_loopback(host):
            self._error(403, "proxy: absolute http:// URLs to loopback only")
            return
        self.proxy_log.add(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        path = urllib.parse.urlunsplit(("", "", target.path or "/", target.query, ""))
        conn = _UnobservedHTTPConnection(host, target.port or 80, timeout=_UPSTREAM_TIMEOUT)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            self._error(502, f"proxy: {exc}")
            return
        finally:
            conn.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = _forward
    do_HEAD = _forward
    do_POST = _forward
    do_PUT = _forward
    do_DELETE = _forward


def start_http_proxy(host: str = LOOPBACK_V4) -> HttpProxy:
    """Start an HTTP forward proxy in a daemon thread on ``host`` (port 0).

    Forwards absolute-URI requests (``GET http://127.0.0.1:N/ok``) and tunnels
    ``CONNECT host:port``, to loopback targets only (others get 403). Keeps client
    connections alive (HTTP/1.1); every request and tunnel is recorded in ``log``.
    On stop, open client connections and tunnels are shut down.
    """
    log = ProxyLog()
    handler = type("_BoundProxyHandler", (_ProxyHandler,), {"proxy_log": log})
    server = _TrackingServer((host, 0), handler)
    port, stopper = _serve(server, f"test-proxy-{host}")
    return HttpProxy(host=host, port=port, pid=os.getpid(), _stopper=stopper, log=log)


# --------------------------------------------------------------------------- holding listener, /proc fds


@dataclass(frozen=True)
class HoldingListener(_Handle):
    """A loopback listener that accepts connections and holds them open, saying nothing."""

    accepted: list[socket.socket] = field(default_factory=list, repr=False, compare=False)


def start_holding_listener(host: str = LOOPBACK_V4) -> HoldingListener:
    """Listen on a free loopback port in a thread; every accepted connection is held until stop.

    For clients whose server cannot be installed here (MongoDB): the client connects and
    waits for an answer that never comes, long enough to read its socket's options. The
    listener is a ``_socket.socket``, so kapatch's shared hooks never see it.
    """
    listener = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(64)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]
            except (TimeoutError, OSError):
                continue
            accepted.append(socket.socket(fileno=fd))

    thread = threading.Thread(target=serve, name=f"holding-listener-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=5)
        listener.close()
        for conn in accepted:
            conn.close()

    return HoldingListener(host=host, port=port, pid=os.getpid(), _stopper=_once(stop), accepted=accepted)


@dataclass(frozen=True)
class ForgetfulHttpServer(_Handle):
    """An HTTP/1.1 keep-alive server that forgets connections idle longer than ``forget_after``."""

    forget_after: float = 1.0
    accepted: list[socket.socket] = field(default_factory=list, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def connections(self) -> int:
        """How many connections the server has accepted so far."""
        return len(self.accepted)


_FORGETFUL_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


def start_forgetful_http_server(forget_after: float, host: str = LOOPBACK_V4) -> ForgetfulHttpServer:
    """200 ``ok\\n`` to ``GET`` (``HEAD``: the headers), but never on a connection idle over *forget_after* s.

    Models a NAT gateway or load balancer that forgot an idle flow: a request sent on such
    a connection arrives and is never answered, and nothing (no FIN, no RST) tells the
    client, which waits until its own read timeout. Sockets are ``_socket.socket``, so
    kapatch's shared hooks never see the server's side.
    """
    listener = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(64)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stopping = threading.Event()
    threads: list[threading.Thread] = []

    def serve_one(conn: socket.socket) -> None:
        last_answer = time.monotonic()
        pending = b""
        forgotten = False
        while not stopping.is_set():
            if not select.select([conn], [], [], 0.2)[0]:
                continue
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if forgotten or (not pending and time.monotonic() - last_answer > forget_after):
                forgotten = True  # the flow is gone: whatever arrives is dropped, unanswered
                continue
            pending += data
            while b"\r\n\r\n" in pending:  # the clients here send GET or HEAD: no bodies
                head = pending.startswith(b"HEAD ")
                pending = pending.split(b"\r\n\r\n", 1)[1]
                conn.sendall(_FORGETFUL_REPLY[:-3] if head else _FORGETFUL_REPLY)
                last_answer = time.monotonic()

    def serve() -> None:
        while not stopping.is_set():
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]
            except (TimeoutError, OSError):
                continue
            conn = socket.socket(fileno=fd)
            accepted.append(conn)
            thread = threading.Thread(target=serve_one, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    thread = threading.Thread(target=serve, name=f"forgetful-http-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=5)
        for handler in threads:
            handler.join(timeout=5)
        listener.close()
        for conn in accepted:
            conn.close()

    return ForgetfulHttpServer(
        host=host,
        port=port,
        pid=os.getpid(),
        _stopper=_once(stop),
        forget_after=forget_after,
        accepted=accepted,
    )


def sockets_connected_to(port: int, host: str = LOOPBACK_V4) -> list[socket.socket]:
    """This process's TCP sockets whose peer is ``(host, port)``, found through /proc/self/fd.

    For clients that keep their sockets out of reach (pymongo's monitor, a C client).
    Each is a duplicate of the descriptor (same kernel socket, so getsockopt reads the
    client's options); the caller closes them.
    """
    import stat

    found: list[socket.socket] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            dup = socket.socket(fileno=os.dup(fd))
        except (ValueError, OSError):
            continue  # the listing's own fd, or one closed meanwhile
        try:
            peer = dup.getpeername() if dup.type == socket.SOCK_STREAM else None
        except OSError:
            peer = None
        if isinstance(peer, tuple) and peer[:2] == (host, port):
            found.append(dup)
        else:
            dup.close()
    return found


def wait_for_sockets_connected_to(
    port: int, host: str = LOOPBACK_V4, timeout: float = 15.0
) -> list[socket.socket]:
    """:func:`sockets_connected_to`, polled until at least one appears (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        found = sockets_connected_to(port, host)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --------------------------------------------------------------------------- rabbitmq


@dataclass(frozen=True)
class RabbitServer(_Handle):
    workdir: Path = field(compare=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"


def _rabbit_script() -> Path | None:
    # /usr/sbin/rabbitmq-server switches to the rabbitmq user; the script behind it runs as us.
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_rabbitmq(*, startup_timeout: float = 60.0) -> RabbitServer:
    """Start a private RabbitMQ node: its own name, ports, epmd, data and logs in a temp dir.

    ``RABBITMQ_NODE_PORT`` (AMQP), ``RABBITMQ_DIST_PORT`` and ``ERL_EPMD_PORT`` are free
    loopback ports (never the machine's 5672/25672/4369), no plugins. Ready when the AMQP
    port accepts a connection (the listener opens last in the boot). Stopped by its own pid
    (SIGTERM stops a RabbitMQ node cleanly); then its private epmd, found by its pid.
    """
    script = _rabbit_script()
    if script is None:
        raise ServerStartError("rabbitmq-server not found: run scripts/install-system-deps")
    workdir = Path(tempfile.mkdtemp(prefix="kapatch-rabbitmq-"))
    (workdir / "enabled_plugins").write_text("[].\n")
    for _ in range(START_ATTEMPTS):
        port, dist_port, epmd_port = free_port(ipv6=False), free_port(ipv6=False), free_port(ipv6=False)
        if len({port, dist_port, epmd_port}) < 3:
            continue
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),  # the Erlang cookie goes here, not in root's home
            "RABBITMQ_NODENAME": f"kapatch-test-{os.getpid()}-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK_V4,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK_V4,
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(workdir / "pid"),
        }
        with (workdir / "stdout.log").open("ab") as output:
            proc = subprocess.Popen(
                [str(script)], stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd=workdir, env=env
            )

        def accepts(port: int = port) -> bool:
            try:
                with _connect_unobserved(LOOPBACK_V4, port, timeout=1.0):
                    return True
            except OSError:
                return False

        if _wait_until(accepts, proc, startup_timeout):
            break
        _terminate(proc, signal.SIGTERM, 30)
        _stop_epmd(epmd_port)
    else:
        tail = _log_tail(workdir / "stdout.log")
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerStartError(f"rabbitmq-server did not start:\n{tail}")

    def stop() -> None:
        _terminate(proc, signal.SIGTERM, 30)
        _stop_epmd(epmd_port)
        shutil.rmtree(workdir, ignore_errors=True)

    return RabbitServer(host=LOOPBACK_V4, port=port, pid=proc.pid, _stopper=_once(stop), workdir=workdir)


def _stop_epmd(epmd_port: int) -> None:
    """Stop the epmd daemon the node started on its private port: the pid listening there."""
    inode_of_listener = None
    hex_port = f":{epmd_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[1].endswith(hex_port) and fields[3] == "0A":  # LISTEN
                    inode_of_listener = fields[9]
    if inode_of_listener is None:
        return
    target = f"socket:[{inode_of_listener}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm != "epmd":
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    os.kill(int(pid), signal.SIGTERM)
                    return
