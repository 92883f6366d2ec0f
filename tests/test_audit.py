"""kapatch.audit: real connections, listed from the process's descriptors, read back, judged."""

from __future__ import annotations

import _socket
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis
import urllib3

import kapatch
from kapatch import AuditEntry, AuditReport

POLICY = {"idle": "11s", "interval": "3s", "count": 4}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def entry(report: AuditReport, port: int, direction: str = "outbound") -> AuditEntry:
    """The one entry of *direction* whose peer (for a listener: local) port is *port*."""
    address = "local" if direction == "listening" else "peer"
    found = [
        e
        for e in report.entries
        if e.direction == direction and (getattr(e, address) or "").endswith(f":{port}")
    ]
    assert len(found) == 1, report.render()
    return found[0]


def test_raw_sockets_without_kapatch_are_missed(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    try:
        report = kapatch.audit()
        found = entry(report, port)
        assert found.verdict == "missed"
        assert found.keepalive is not None and not found.keepalive.enabled
        assert found.fd == client.fileno() and found.adapter is None
        assert "not installed" in report.policy_source
        assert entry(report, port, "listening").verdict == "out-of-scope"
        back = [e for e in report.entries if e.fd == accepted.fileno()]
        assert back and back[0].direction == "accepted"
    finally:
        client.close()
        accepted.close()


def test_kapatch_sockets_match_and_the_c_path_is_missed(
    install: Callable[..., Any], listener: socket.socket
) -> None:
    install(**POLICY)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # the C class: no hook sees it
    raw.connect(("127.0.0.1", port))
    try:
        report = kapatch.audit()
        ours = next(e for e in report.entries if e.fd == client.fileno())
        assert (ours.verdict, ours.adapter) == ("matches", "socket")
        assert ours.keepalive is not None and ours.keepalive.idle == 11
        c_path = next(e for e in report.entries if e.fd == raw.fileno())
        assert c_path.verdict == "missed" and c_path.adapter is None
        assert report.missed == (c_path,)
        document = json.loads(report.to_json())
        assert document["missed"] == 1
    finally:
        client.close()
        raw.close()


def test_respect_mode_and_skip_rules_are_kept(install: Callable[..., Any], listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    install(**POLICY, rules=[kapatch.Rule.build(f"*:{port}", skip=True)])
    skipped = socket.create_connection(("127.0.0.1", port))
    install(**POLICY)
    own = socket.socket()
    own.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    own.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
    own.connect(("127.0.0.1", port))
    try:
        install(**POLICY, rules=[kapatch.Rule.build(f"*:{port}", skip=True)])
        report = kapatch.audit()
        by_fd = {e.fd: e for e in report.entries}
        assert by_fd[skipped.fileno()].verdict == "kept"
        assert "skips" in by_fd[skipped.fileno()].details[0]
        install(**POLICY)
        report = kapatch.audit()
        mine = next(e for e in report.entries if e.fd == own.fileno())
        assert mine.verdict == "kept", report.render()
        assert mine.keepalive is not None and mine.keepalive.idle == 77
    finally:
        skipped.close()
        own.close()


def test_clients_redis_http_psycopg(
    install: Callable[..., Any], redis_server: Any, http_server: Any, postgres_server: Any
) -> None:
    install(**POLICY)
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.ping()
    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(http_server.url.rsplit(":", 1)[1].split("/")[0]))
    assert pool.request("GET", "/ok").status == 200
    conn = psycopg.connect(postgres_server.dsn)
    web = httpx.Client()
    assert web.get(http_server.url + "/ok").status_code == 200
    try:
        report = kapatch.audit()
        assert entry(report, redis_server.port).adapter == "redis"
        assert entry(report, redis_server.port).verdict == "matches"
        by_adapter = {e.adapter: e for e in report.entries}
        assert by_adapter["urllib3"].verdict == "matches"
        assert (by_adapter["urllib3"].peer or "").endswith(f":{pool.port}")
        pg = entry(report, postgres_server.port)
        assert pg.verdict == "matches", report.render()
        assert pg.keepalive is not None and pg.keepalive.idle == 11
        assert by_adapter["httpx"].verdict == "matches"
        assert not report.missed, report.render()
    finally:
        client.close()
        pool.close()
        conn.close()
        web.close()


CHILD = textwrap.dedent(
    """
    import socket, sys, time
    port = int(sys.argv[1])
    plain = socket.create_connection(("127.0.0.1", port))
    tuned = socket.socket()
    tuned.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in ((socket.TCP_KEEPIDLE, 11), (socket.TCP_KEEPINTVL, 3), (socket.TCP_KEEPCNT, 4),
                          (socket.TCP_USER_TIMEOUT, 23000)):
        tuned.setsockopt(socket.IPPROTO_TCP, option, value)
    tuned.connect(("127.0.0.1", port))
    print(plain.getsockname()[1], tuned.getsockname()[1], flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def child(listener: socket.socket) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(listener.getsockname()[1])],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")},
    )
    try:
        assert proc.stdout is not None
        plain, tuned = map(int, proc.stdout.readline().split())
        yield proc, plain, tuned
    finally:
        proc.kill()
        proc.wait()


def _by_local_port(report: AuditReport, port: int) -> AuditEntry:
    found = [e for e in report.entries if e.local.endswith(f":{port}") and e.direction == "outbound"]
    assert len(found) == 1, report.render()
    return found[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for pidfd_getfd of a child")
def test_another_process_as_root(child: tuple[subprocess.Popen[str], int, int]) -> None:
    proc, plain, tuned = child
    done = subprocess.run(
        [sys.executable, "-m", "kapatch.cli", "audit", "--pid", str(proc.pid), "--json"],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")},
             "KAPATCH_IDLE": "11s", "KAPATCH_INTERVAL": "3s", "KAPATCH_COUNT": "4"},
        check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert not document["partial"]
    entries = {e["local"].rsplit(":", 1)[1]: e for e in document["entries"] if e["direction"] == "outbound"}
    assert entries[str(plain)]["verdict"] == "missed"
    # The child's own environment has no KAPATCH_*: balanced policy; its 11/3/4 is a choice, kept.
    assert entries[str(tuned)]["keepalive"]["idle"] == 11
    assert entries[str(tuned)]["verdict"] == "kept"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid to nobody")
def test_unprivileged_audit_is_partial_and_says_why(child: tuple[subprocess.Popen[str], int, int]) -> None:
    proc, plain, tuned = child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, audit the root-owned process
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            report = kapatch.audit(proc.pid)
            os.write(write, report.to_json().encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    document = json.loads(b"".join(chunks))
    assert document["partial"]
    notes = " ".join(document["notes"])
    assert "ptrace_scope" in notes and "not readable" in notes
    assert "CAP_SYS_PTRACE" in notes and "uid 0" in notes
    entries = {e["local"].rsplit(":", 1)[1]: e for e in document["entries"] if e["direction"] == "outbound"}
    assert entries[str(plain)]["verdict"] == "missed"  # no keepalive timer: keepalive is off
    assert entries[str(tuned)]["verdict"] == "unverified"
    assert "keepalive on" in entries[str(tuned)]["details"][0]
    assert entries[str(tuned)]["keepalive"] is None


def test_kapatch_run_audit_prints_the_audit_at_exit() -> None:
    program = (
        "import socket, _socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "ours = socket.create_connection(server.getsockname())\n"
        "raw = _socket.socket(); raw.connect(server.getsockname())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "kapatch.cli", "run", "--audit", "--idle", "11s", "--interval", "3s",
         "--count", "4", "--", sys.executable, "-c", program],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # the command's own status, not the audit's
    assert "kapatch audit at exit" in done.stderr
    lines = [line for line in done.stderr.splitlines() if "ESTABLISHED" in line]
    assert len(lines) == 2, done.stderr
    assert any(line.lstrip().startswith("MATCHES") and "adapter socket" in line for line in lines)
    assert any(line.lstrip().startswith("MISSED") and "adapter -" in line for line in lines)


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_reading_changes_nothing_and_closes_every_duplicate(
    install: Callable[..., Any], listener: socket.socket, child: tuple[subprocess.Popen[str], int, int]
) -> None:
    install(**POLICY)
    proc = child[0]
    sock = socket.create_connection(listener.getsockname())
    try:
        before_state = kapatch.inspect(sock)
        before = _open_fds()
        kapatch.audit()
        kapatch.audit(proc.pid)
        assert _open_fds() == before
        assert kapatch.inspect(sock) == before_state
    finally:
        sock.close()
