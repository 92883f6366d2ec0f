"""gevent adapter: every client under ``gevent.monkey.patch_all()``, options read back from the kernel.

Monkey patching is process-wide, so each case runs in a fresh interpreter. "kapatch first"
is the normal order (``KAPATCH_ENABLED=1``: the .pth boots kapatch before any application
code, then the application calls ``patch_all()``); "gevent first" patches, then calls
``kapatch.install()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from checks import READ_SOCKET_SOURCE

POLICY = {"KAPATCH_IDLE": "13", "KAPATCH_INTERVAL": "3", "KAPATCH_COUNT": "4"}
WANTED = (1, 13, 3, 4, 25000)
ORDERS = ["kapatch-first", "gevent-first"]

PRELUDE = (
    """
import json, os, sys
ORDER = sys.argv[1]
if ORDER == "kapatch-first":
    import kapatch  # already installed by the .pth (KAPATCH_ENABLED=1)
    from gevent import monkey
    monkey.patch_all()
else:
    from gevent import monkey
    monkey.patch_all()
    import kapatch
    kapatch.install()
import socket
import gevent
assert type(socket.socket).__module__ != "socket" or socket.socket.__module__.startswith("gevent")
"""
    + READ_SOCKET_SOURCE
    + """
def row(sock):
    values = read(sock)
    return [values[k] for k in ("keepalive", "idle", "interval", "count", "user_timeout_ms")]

def report(sock, **extra):
    status = kapatch.status()
    counts = {a.name: dict(a.counts) for a in status.adapters if any(a.counts.values())}
    print(json.dumps({"type": type(sock).__module__, "row": row(sock), "counts": counts, **extra}))
"""
)

CLIENTS = {
    "raw": """
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
sock = socket.create_connection(listener.getsockname())
report(sock)
""",
    "raw-chosen": """
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 50)
sock.connect(listener.getsockname())
report(sock)
""",
    "stdlib-class": """
# The stdlib class gevent saved: the shared hook found it (gevent.monkey.saved), in both orders.
from kapatch._socket_hooks import stdlib_socket_class
original = monkey.get_original("socket", "socket")
assert stdlib_socket_class() is original, (stdlib_socket_class(), original)
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
sock = original()
sock.connect(listener.getsockname())
print(json.dumps({"type": "gevent-run", "row": row(sock), "counts":
                  {a.name: dict(a.counts) for a in kapatch.status().adapters if any(a.counts.values())}}))
""",
    "cooperative": """
import errno, select
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(16)
def one():
    sock = socket.socket()
    sock.setblocking(False)
    code = sock.connect_ex(listener.getsockname())
    assert code in (0, errno.EINPROGRESS), code
    select.select([], [sock], [], 5)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return sock
jobs = [gevent.spawn(one) for _ in range(5)]
gevent.joinall(jobs, raise_error=True)
rows = [row(job.value) for job in jobs]
assert all(r == rows[0] for r in rows), rows
report(jobs[0].value, n=len(rows))
""",
    "requests": """
import requests
response = requests.Session().get(os.environ["URL"] + "/ok", stream=True)
assert response.status_code == 200
report(response.raw._connection.sock)
""",
    "httpx": """
import httpx
with httpx.Client() as client:
    response = client.get(os.environ["URL"] + "/ok")
    assert response.status_code == 200
    report(response.extensions["network_stream"].get_extra_info("socket"))
""",
    "redis": """
import redis
options = json.loads(os.environ.get("REDIS_OPTIONS", "null"))
kwargs = {}
if options:
    kwargs = {"socket_keepalive": True,
              "socket_keepalive_options": {getattr(socket, k): v for k, v in options.items()}}
client = redis.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]), **kwargs)
assert client.ping()
import inspect
command = inspect.signature(client.connection_pool.get_connection).parameters.get("command_name")
# redis-py < 5.3 requires a command name; later versions deprecate passing one.
needs = command is not None and command.default is inspect.Parameter.empty
connection = client.connection_pool.get_connection(*(("PING",) if needs else ()))
report(connection._sock)
""",
    "pymysql": """
# A listener that accepts and holds the connection (no MySQL greeting): PyMySQL waits in
# its handshake read; the client socket is read there, from this side.
import gc, pymysql
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
port = listener.getsockname()[1]
held = []
def serve():
    conn, _ = listener.accept()
    held.append(conn)
gevent.spawn(serve)
job = gevent.spawn(pymysql.connect, host="127.0.0.1", port=port, connect_timeout=5)
while not held:
    gevent.sleep(0.01)
mine = [o for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() >= 0
        and o is not listener and o not in held and o.getpeername()[1:2] == (port,)]
assert len(mine) == 1, mine
report(mine[0])
job.kill()
""",
}


def row_of(result: dict[str, object]) -> tuple[int, ...]:
    """(SO_KEEPALIVE, idle, interval, count, user timeout ms) read back in the child."""
    return tuple(result["row"])  # type: ignore[call-overload]


def run(client: str, order: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    environ.update(POLICY)
    if order == "kapatch-first":
        environ["KAPATCH_ENABLED"] = "1"
    environ.update(env)
    source = textwrap.dedent(PRELUDE) + textwrap.dedent(CLIENTS[client])
    proc = subprocess.run(
        [sys.executable, "-c", source, order], env=environ, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(result["type"]).startswith("gevent"), result  # really gevent's socket class
    return result


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("client", ["raw", "cooperative", "pymysql"])
@pytest.mark.parametrize("mode", ["respect", "override"])
def test_unclaimed_gevent_sockets_carry_the_policy(client, order, mode):
    result = run(client, order, KAPATCH_MODE=mode)
    assert row_of(result) == WANTED
    counts = result["counts"]
    assert counts["gevent"]["configured"] == result.get("n", 1)  # type: ignore[index]
    assert "socket" not in counts  # type: ignore[operator]


@pytest.mark.parametrize("order", ORDERS)
def test_the_stdlib_class_keeps_the_shared_hook_after_patch_all(order):
    result = run("stdlib-class", order, KAPATCH_SOCKET_IDLE="9")
    assert row_of(result) == (1, 9, 3, 4, 21000)
    assert result["counts"]["socket"]["configured"] == 1  # type: ignore[index]


@pytest.mark.parametrize("order", ORDERS)
def test_the_gevent_adapters_own_fields(order):
    result = run("raw", order, KAPATCH_GEVENT_IDLE="11")
    assert row_of(result) == (1, 11, 3, 4, 23000)


@pytest.mark.parametrize("order", ORDERS)
def test_respect_mode_keeps_what_the_application_set_on_a_gevent_socket(order):
    respected = run("raw-chosen", order)
    assert row_of(respected)[:4] == (1, 50, 3, 4)
    overridden = run("raw-chosen", order, KAPATCH_MODE="override")
    assert row_of(overridden) == WANTED


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", ["respect", "override"])
@pytest.mark.parametrize(("client", "adapter"), [("requests", "urllib3"), ("httpx", "httpx")])
def test_http_clients_under_gevent_get_their_librarys_policy(http_server, client, adapter, order, mode):
    result = run(
        client, order, URL=http_server.url, KAPATCH_MODE=mode, **{f"KAPATCH_{adapter.upper()}_IDLE": "17"}
    )
    assert row_of(result) == (1, 17, 3, 4, 29000)
    assert result["counts"][adapter]["configured"] == 1  # type: ignore[index]
    assert "gevent" not in result["counts"]  # type: ignore[operator]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", ["respect", "override"])
def test_redis_under_gevent_gets_the_redis_policy_over_redis_py_defaults(redis_server, order, mode):
    result = run(
        "redis", order, REDIS_PORT=str(redis_server.port), KAPATCH_MODE=mode, KAPATCH_REDIS_IDLE="17"
    )
    assert row_of(result) == (1, 17, 3, 4, 29000)
    assert result["counts"]["redis"]["configured"] == 1  # type: ignore[index]


@pytest.mark.parametrize("order", ORDERS)
def test_redis_explicit_options_under_gevent_win_only_in_respect_mode(redis_server, order):
    options = json.dumps({"TCP_KEEPIDLE": 40, "TCP_KEEPINTVL": 6, "TCP_KEEPCNT": 2})
    common = {"REDIS_PORT": str(redis_server.port), "REDIS_OPTIONS": options}
    respected = run("redis", order, **common)
    assert row_of(respected)[:4] == (1, 40, 6, 2)
    overridden = run("redis", order, KAPATCH_MODE="override", **common)
    assert row_of(overridden) == WANTED


def test_without_kapatch_gevent_sockets_keep_the_kernel_defaults():
    """The control: the same child with kapatch disabled sets nothing."""
    result = run("raw", "kapatch-first", KAPATCH_ENABLED="0")
    keepalive, *_, user_timeout = row_of(result)
    assert (keepalive, user_timeout) == (0, 0)
