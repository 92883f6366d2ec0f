"""Real servers inside the lab namespace: an HTTP server, redis-server, PostgreSQL, gRPC, and
MariaDB (only when a client that needs it runs).

Each is started with `ip netns exec`, listens on the lab address only, and is stopped by
the pid this module started (SIGTERM, then SIGKILL after a bounded wait).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from integrations.netlab import LAB_ADDR, LabError, LabUnavailable, ns_cmd, run

HTTP_PORT = 8080
REDIS_PORT = 6379
PG_PORT = 5432
MARIADB_PORT = 3306
GRPC_PORT = 50051
REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
TMP_PREFIX = "kplab-run-"


def sweep_stale_tmpdirs() -> list[str]:
    """Remove temporary directories of earlier runs (call only while holding the lab lock)."""
    stale = glob.glob(os.path.join(tempfile.gettempdir(), TMP_PREFIX + "*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def clean_env() -> dict[str, str]:
    """The environment without any KAPATCH_* variable: servers are never patched."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}


def pg_bindir() -> Path | None:
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def missing_servers() -> str | None:
    """None if every server binary is installed, else what is missing."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install -y redis-server)")
    if pg_bindir() is None:
        missing.append("PostgreSQL server binaries (apt-get install -y postgresql)")
    if shutil.which("setpriv") is None:
        missing.append("setpriv (util-linux)")
    if importlib.util.find_spec("grpc") is None:
        missing.append("grpcio for the lab's gRPC server (pip install -e '.[all]')")
    return "missing: " + ", ".join(missing) if missing else None


def mariadb_binaries() -> tuple[str, str] | None:
    """(mariadbd, mariadb-install-db), or None when MariaDB's server is not installed."""
    fallback = "/usr/sbin/mariadbd" if os.access("/usr/sbin/mariadbd", os.X_OK) else None
    server = shutil.which("mariadbd") or fallback
    install_db = shutil.which("mariadb-install-db")
    return (server, install_db) if server and install_db else None


def _connects(port: int) -> bool:
    try:
        with socket.create_connection((LAB_ADDR, port), timeout=0.5):
            return True
    except OSError:
        return False


def _answers(port: int, request: bytes, reply: bytes) -> bool:
    """Whether the lab server on *port* answers *request* with a reply starting with *reply*."""
    try:
        with socket.create_connection((LAB_ADDR, port), timeout=0.5) as s:
            s.sendall(request)
            return s.recv(64).startswith(reply)
    except OSError:
        return False


def _redis_pong() -> bool:
    return _answers(REDIS_PORT, b"PING\r\n", b"+PONG")


def _http_ok() -> bool:
    return _answers(HTTP_PORT, b"GET /ok HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200")


def _mariadb_greets() -> bool:
    """MariaDB speaks first: its handshake packet, protocol version 10 after the 4-byte header."""
    try:
        with socket.create_connection((LAB_ADDR, MARIADB_PORT), timeout=0.5) as s:
            greeting = s.recv(128)
    except OSError:
        return False
    return len(greeting) > 4 and greeting[4] == 10


@dataclass
class LabServers:
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tmpdir: Path | None = None
    mariadb: bool = False
    """Start MariaDB too (the mysqlclient client needs it)."""

    def _spawn(self, name: str, cmd: list[str], log: Path) -> None:
        with open(log, "wb") as fh:
            self.procs[name] = subprocess.Popen(
                ns_cmd(cmd),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=clean_env(),
            )

    def _wait(self, name: str, ready: object, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():  # type: ignore[operator]
            proc = self.procs[name]
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise LabError(f"{name} did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)

    def start(self) -> None:
        reason = missing_servers()
        if reason is None and self.mariadb and mariadb_binaries() is None:
            reason = "missing: MariaDB server (apt-get install -y mariadb-server)"
        if reason:
            raise LabUnavailable(reason)
        sweep_stale_tmpdirs()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        self.tmpdir.chmod(0o755)
        self._start_http()
        self._start_redis()
        self._start_postgres()
        self._start_grpc()
        if self.mariadb:
            self._start_mariadb()

    def _start_mariadb(self) -> None:
        assert self.tmpdir is not None
        found = mariadb_binaries()
        assert found is not None
        server, install_db = found
        root = self.tmpdir / "mariadb"
        root.mkdir()
        data = root / "data"
        run([install_db, "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db",
             "--skip-name-resolve"], timeout=60)  # fmt: skip
        log = root / "mariadb.log"
        cmd = [
            server, "--no-defaults",
            f"--datadir={data}",
            f"--socket={root / 'mariadb.sock'}",
            f"--pid-file={root / 'mariadb.pid'}",
            f"--bind-address={LAB_ADDR}",
            f"--port={MARIADB_PORT}",
            "--user=root",
            # Lab only: any user, no password (the namespace holds nothing else).
            "--skip-grant-tables",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
        ]  # fmt: skip
        self._spawn("mariadb", cmd, log)
        self._wait("mariadb", _mariadb_greets, log)

    def _start_http(self) -> None:
        assert self.tmpdir is not None
        log = self.tmpdir / "http.log"
        cmd = [sys.executable, "-m", "integrations.httpserver", LAB_ADDR, str(HTTP_PORT)]
        self._spawn("http", cmd, log)
        self._wait("http", _http_ok, log)

    def _start_redis(self) -> None:
        assert self.tmpdir is not None
        log = self.tmpdir / "redis.log"
        cmd = [
            shutil.which("redis-server") or "redis-server",
            "--bind", LAB_ADDR,
            "--port", str(REDIS_PORT),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.tmpdir),
        ]  # fmt: skip
        self._spawn("redis", cmd, log)
        self._wait("redis", _redis_pong, log)

    def _start_grpc(self) -> None:
        assert self.tmpdir is not None
        log = self.tmpdir / "grpc.log"
        cmd = [sys.executable, "-m", "integrations.grpcserver", LAB_ADDR, str(GRPC_PORT)]
        self._spawn("grpc", cmd, log)
        self._wait("grpc", lambda: _connects(GRPC_PORT), log)

    def _start_postgres(self) -> None:
        assert self.tmpdir is not None
        bindir = pg_bindir()
        assert bindir is not None
        pgroot = self.tmpdir / "pg"
        pgroot.mkdir()
        shutil.chown(pgroot, "postgres", "postgres")
        data = pgroot / "data"
        as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        run(
            [*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            timeout=60,
        )  # fmt: skip
        (data / "pg_hba.conf").write_text("local all all trust\nhost all all 198.18.0.0/15 trust\n")
        log = pgroot / "postgres.log"
        cmd = [
            *as_pg,
            str(bindir / "postgres"),
            "-D", str(data),
            "-c", f"listen_addresses={LAB_ADDR}",
            "-c", f"port={PG_PORT}",
            "-c", f"unix_socket_directories={pgroot}",
            "-c", "fsync=off",
            "-c", "max_connections=60",
            # Backends notice a vanished client within 1 s instead of sleeping for an hour.
            "-c", "client_connection_check_interval=1000",
        ]  # fmt: skip
        self._spawn("postgres", cmd, log)

        def pg_ready() -> bool:
            proc = subprocess.run(
                [str(bindir / "pg_isready"), "-h", LAB_ADDR, "-p", str(PG_PORT), "-t", "1"],
                capture_output=True,
                timeout=5,
                check=False,
            )
            return proc.returncode == 0

        self._wait("postgres", pg_ready, log)

    def stop(self) -> None:
        """Stop every server this object started, by pid; remove the temporary directory."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                # A server left frozen (hung-peer, SIGSTOP) would never act on SIGTERM.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                # PostgreSQL: SIGINT is "fast" shutdown (SIGTERM would wait for clients).
                sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
        deadline = time.monotonic() + 10.0
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
