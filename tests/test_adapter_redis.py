"""The redis-py adapter, sync and asyncio, against a real private redis-server on loopback.

Every assertion reads the options back from the live connection's own socket with
getsockopt (``kapatch.inspect``): the pooled sync connection's ``_sock``, and the
asyncio connection's transport socket. redis is imported here at module level, i.e.
before ``install()``; the imported-after case runs in a fresh interpreter. Runs on
redis-py 8.x and 5.x (where keepalive is off by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect as pyinspect
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.cluster
import redis.connection
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import RedisServer, free_port, self_signed_cert

import kapatch
from kapatch import KeepaliveState, Policy, Rule
from kapatch.adapters._base import version_tuple
from kapatch.adapters.redis import RedisAdapter
from kapatch.profiles import PROFILES

REDIS_VERSION = version_tuple(redis.__version__)
BALANCED = PROFILES["balanced"].policy  # the default policy: 60/10/5, user timeout 110 s
FAST = PROFILES["fast-failover"].policy  # 10/5/3, user timeout 25 s
# socket_keepalive=True is redis 8's default (no choice), and a choice on redis 5-7 (default off).
KEEPALIVE_TRUE_KEPT = {} if REDIS_VERSION >= (8,) else {"enabled": 1}
USER_OPTIONS = {socket.TCP_KEEPIDLE: 42, socket.TCP_KEEPINTVL: 4, socket.TCP_KEEPCNT: 2}

# Taken at import, before any test installs kapatch.
ORIGINALS = {
    (cls, "_connect"): vars(cls)["_connect"]
    for cls in (redis.connection.Connection, redis.asyncio.connection.Connection)
}
UNTOUCHED = {
    (cls, name): vars(cls)[name]
    for cls in (
        redis.connection.SSLConnection,
        redis.connection.UnixDomainSocketConnection,
        redis.asyncio.connection.UnixDomainSocketConnection,
    )
    for name in ("__init__", "_connect")
    if name in vars(cls)
}

Install = Callable[..., kapatch.Status]


def expected(policy: Policy) -> KeepaliveState:
    """What the kernel reports for a socket that carries exactly *policy* (Linux)."""
    return KeepaliveState(True, policy.idle, policy.interval, policy.count, policy.user_timeout_ms or 0)


def _pool_args() -> tuple[str, ...]:
    # redis-py < 5.3 requires a command name; later versions deprecate passing one.
    command = pyinspect.signature(redis.ConnectionPool.get_connection).parameters["command_name"]
    return ("PING",) if command.default is pyinspect.Parameter.empty else ()


def sync_state(server: RedisServer, host: str | None = None, **kwargs: Any) -> KeepaliveState:
    """Connect a ``redis.Redis`` through its ConnectionPool; read the pooled socket back."""
    client = redis.Redis(host=host or server.host, port=server.port, **kwargs)
    try:
        connection = client.connection_pool.get_connection(*_pool_args())
        try:
            connection.send_command("PING")
            assert connection.read_response() in (b"PONG", "PONG", True)
            return kapatch.inspect(connection._sock)
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()


async def async_state_of(server: RedisServer, host: str | None = None, **kwargs: Any) -> KeepaliveState:
    """Same with ``redis.asyncio.Redis``: the transport's socket of the pooled connection."""
    client = redis.asyncio.Redis(host=host or server.host, port=server.port, **kwargs)
    try:
        connection = await client.connection_pool.get_connection(*_pool_args())
        try:
            await connection.send_command("PING")
            assert await connection.read_response() in (b"PONG", "PONG", True)
            return kapatch.inspect(connection._writer.transport.get_extra_info("socket"))
        finally:
            await client.connection_pool.release(connection)
    finally:
        await client.aclose() if hasattr(client, "aclose") else await client.close()


def async_state(server: RedisServer, host: str | None = None, **kwargs: Any) -> KeepaliveState:
    return asyncio.run(async_state_of(server, host, **kwargs))


BOTH = pytest.mark.parametrize("state", [sync_state, async_state], ids=["sync", "asyncio"])


def counts(adapter: str) -> dict[str, int]:
    (entry,) = [a for a in kapatch.status().adapters if a.name == adapter]
    return dict(entry.counts)


def kept(adapter: str) -> dict[str, int]:
    (entry,) = [a for a in kapatch.status().adapters if a.name == adapter]
    return dict(entry.kept)


@pytest.fixture(scope="module")
def baseline(redis_server: RedisServer) -> dict[str, KeepaliveState]:
    """What redis-py makes without kapatch (never installed while this runs)."""
    kapatch.uninstall()
    found = {"sync": sync_state(redis_server), "asyncio": async_state(redis_server)}
    if REDIS_VERSION >= (8,):  # redis-py 8's own default, which the policy must replace
        assert found["sync"] == found["asyncio"] == KeepaliveState(True, 30, 5, 3, 0)
    else:
        assert not found["sync"].enabled
        assert not found["asyncio"].enabled
    return found


def name_of(state: Callable[..., KeepaliveState]) -> str:
    return "sync" if state is sync_state else "asyncio"


# --------------------------------------------------------------------------- the policy lands


@BOTH
def test_connection_carries_exactly_the_default_policy(install, redis_server, baseline, state):
    assert baseline[name_of(state)] != expected(BALANCED)
    install()
    found = state(redis_server)
    assert found == expected(BALANCED)
    assert found.mismatches(BALANCED) == ()


@BOTH
def test_redis_8_default_is_replaced_by_a_profile(install, redis_server, state):
    install(profile="fast-failover")
    assert state(redis_server) == expected(FAST)


@BOTH
def test_per_adapter_override_lands_on_redis_and_not_on_raw_sockets(install, redis_server, state):
    install(idle="40s", overrides={"redis": {"idle": "17s", "count": "2"}})
    assert state(redis_server) == expected(BALANCED.evolve(idle="17s", count="2"))
    raw = socket.create_connection((redis_server.host, redis_server.port), timeout=5)
    with raw:
        assert kapatch.inspect(raw) == expected(BALANCED.evolve(idle="40s"))


@BOTH
def test_per_adapter_override_from_the_environment(install, redis_server, state):
    install(environ={"KAPATCH_IDLE": "40s", "KAPATCH_REDIS_IDLE": "17s", "KAPATCH_REDIS_USER_TIMEOUT": "9s"})
    assert state(redis_server) == expected(BALANCED.evolve(idle="17s", user_timeout="9s"))


@BOTH
def test_port_skip_rule_leaves_the_connection_as_redis_made_it(install, redis_server, baseline, state):
    install(rules=[Rule.build(f"*:{redis_server.port}", skip=True)])
    assert state(redis_server) == baseline[name_of(state)]
    assert counts("redis")["skipped"] == 1
    assert counts("redis")["configured"] == 0


@BOTH
def test_host_glob_rule_matches_the_name_redis_was_given(install, redis_server, baseline, state):
    install(rules=[Rule.build("localhost", skip=True), Rule.build("127.0.0.1", idle="13s")])
    assert state(redis_server, host="localhost") == baseline[name_of(state)]
    assert state(redis_server, host="127.0.0.1") == expected(BALANCED.evolve(idle="13s"))


@BOTH
def test_rule_for_redis_only_does_not_touch_raw_sockets(install, redis_server, state):
    install(rules=[Rule.build(f"*:{redis_server.port}", adapters=["redis"], idle="13s")])
    assert state(redis_server) == expected(BALANCED.evolve(idle="13s"))
    raw = socket.create_connection((redis_server.host, redis_server.port), timeout=5)
    with raw:
        assert kapatch.inspect(raw) == expected(BALANCED)


# --------------------------------------------------------------------------- respect / override


@BOTH
def test_respect_mode_keeps_explicit_keepalive_options(install, redis_server, state):
    install(profile="fast-failover")
    found = state(redis_server, socket_keepalive=True, socket_keepalive_options=USER_OPTIONS)
    # Field by field: the user chose the three timings, not a user timeout, so the policy's
    # "auto" user timeout lands, computed from the user's own probes (42 + 4 * 2 s). Was
    # (True, 42, 4, 2, 0) and "respected" while any option counted as a choice of every field.
    assert found == KeepaliveState(True, 42, 4, 2, 50_000)
    assert counts("redis")["configured"] == 1
    assert kept("redis") == {"idle": 1, "interval": 1, "count": 1, **KEEPALIVE_TRUE_KEPT}


@BOTH
def test_one_explicit_option_keeps_that_field_only(install, redis_server, state):
    install(profile="fast-failover")
    found = state(redis_server, socket_keepalive=True, socket_keepalive_options={socket.TCP_KEEPIDLE: 42})
    auto_ms = (42 + FAST.interval * FAST.count) * 1000
    assert found == KeepaliveState(True, 42, FAST.interval, FAST.count, auto_ms)
    assert kept("redis") == {"idle": 1, **KEEPALIVE_TRUE_KEPT}


@BOTH
def test_none_and_empty_options_are_not_a_choice(install, redis_server, state):
    # kombu's Redis transport passes socket_keepalive=None, socket_keepalive_options=None:
    # without kapatch keepalive stays off; nobody chose that, so the policy applies.
    install(profile="fast-failover")
    assert state(redis_server, socket_keepalive=None, socket_keepalive_options=None) == expected(FAST)
    assert state(redis_server, socket_keepalive_options={}) == expected(FAST)
    assert counts("redis")["configured"] == 2
    assert kept("redis") == {}


@BOTH
def test_redis_default_options_passed_explicitly_are_not_a_choice(install, redis_server, state):
    install(profile="fast-failover")
    defaults = {socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
    found = state(redis_server, socket_keepalive=True, socket_keepalive_options=defaults)
    if REDIS_VERSION >= (8,):  # exactly redis-py 8's defaults: the policy replaces them
        assert found == expected(FAST)
    else:  # redis 5-7 has no default options: 30/5/3 is the user's choice
        assert found == KeepaliveState(True, 30, 5, 3, 45_000)


@BOTH
def test_os_timings_policy_keeps_the_users_option(install, redis_server, state):
    # os-default writes no timings: the user's own idle is replayed, redis 8's 5/3 are not.
    install(profile="os-default")
    _, interval, count = _os_timings()
    found = state(redis_server, socket_keepalive=True, socket_keepalive_options={socket.TCP_KEEPIDLE: 42})
    assert found == KeepaliveState(True, 42, interval, count, 0)


@BOTH
def test_override_mode_replaces_explicit_keepalive_options(install, redis_server, state):
    install(profile="fast-failover", mode="override")
    found = state(redis_server, socket_keepalive=True, socket_keepalive_options=USER_OPTIONS)
    assert found == expected(FAST)


@BOTH
def test_explicit_keepalive_off(install, redis_server, state):
    install()
    found = state(redis_server, socket_keepalive=False)
    if REDIS_VERSION >= (8,):  # switching redis 8's default off is the user's choice: kept
        assert not found.enabled
        # Keepalive off chooses the probe timings, not the user timeout (a field of its own,
        # which the policy now writes: was "respected" with no user timeout).
        assert found.user_timeout_ms == BALANCED.user_timeout_ms
        assert counts("redis")["configured"] == 1
        assert kept("redis") == {"enabled": 1, "idle": 1, "interval": 1, "count": 1}
    else:  # False is redis 5-7's own default: not a choice, so the policy applies
        assert found == expected(BALANCED)


@BOTH
def test_per_adapter_override_mode(install, redis_server, state):
    install(overrides={"redis": {"mode": "override", "idle": "21s"}})
    found = state(redis_server, socket_keepalive=True, socket_keepalive_options=USER_OPTIONS)
    assert found == expected(BALANCED.evolve(idle="21s"))


def _os_timings() -> tuple[int, int, int]:
    names = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
    return tuple(int(Path("/proc/sys/net/ipv4", name).read_text()) for name in names)  # type: ignore[return-value]


@BOTH
def test_os_timings_policy_does_not_inherit_redis_defaults(install, redis_server, state):
    # SO_KEEPALIVE with the kernel's timings, not redis-py 8's 30/5/3 left underneath.
    install(profile="os-default")
    idle, interval, count = _os_timings()
    assert state(redis_server) == KeepaliveState(True, idle, interval, count, 0)


@BOTH
def test_only_the_redis_adapter_selected(install, redis_server, baseline, state):
    install(adapters=["redis"], profile="fast-failover")
    assert state(redis_server) == expected(FAST)
    raw = socket.create_connection((redis_server.host, redis_server.port), timeout=5)
    with raw:
        assert not kapatch.inspect(raw).enabled  # the socket adapter is off: raw sockets untouched


def test_invalid_user_options_fail_as_without_kapatch(install, redis_server):
    # Respect mode replays the user's own options, so redis reports its own error.
    bad = {"socket_keepalive": True, "socket_keepalive_options": {9999: 1}, "retry": Retry(NoBackoff(), 0)}
    errors = []
    for installed in (False, True):
        if installed:
            install()
        client = redis.Redis(host=redis_server.host, port=redis_server.port, **bad)
        try:
            with pytest.raises(redis.ConnectionError) as raised:
                client.ping()
            errors.append(type(raised.value))
        finally:
            client.close()
    assert errors[0] is errors[1]
    # Option 9999 is no keepalive field: not a choice the policy must respect, but replayed
    # (it is the user's), so redis fails on it as before. Was "respected" (any option counted).
    assert counts("redis")["configured"] == 1


def test_disabled_policy_leaves_redis_defaults(install, redis_server, baseline):
    install(overrides={"redis": {"enabled": "false"}})
    assert sync_state(redis_server) == baseline["sync"]
    assert async_state(redis_server) == baseline["asyncio"]


def test_plain_connection_class_and_url(install, redis_server):
    install(profile="fast-failover")
    connection = redis.Connection(host=redis_server.host, port=redis_server.port)
    try:
        connection.connect()
        assert kapatch.inspect(connection._sock) == expected(FAST)
    finally:
        connection.disconnect()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        (connection,) = client.connection_pool._available_connections
        assert kapatch.inspect(connection._sock) == expected(FAST)
    finally:
        client.close()


def test_ipv6_destination_and_cidr_rule(install, redis_server):
    if not redis_server.ipv6:
        pytest.skip("IPv6 loopback is not available")
    install(rules=[Rule.build("[::1/128]", idle="14s")])
    assert sync_state(redis_server, host="::1") == expected(BALANCED.evolve(idle="14s"))
    assert async_state(redis_server, host="::1") == expected(BALANCED.evolve(idle="14s"))
    assert sync_state(redis_server) == expected(BALANCED)


# --------------------------------------------------------------------------- counters, uninstall


def test_status_counters_move_once_per_connection(install, redis_server):
    install()
    (entry,) = [a for a in kapatch.status().adapters if a.name == "redis"]
    assert entry.enabled
    assert entry.reason == "patched"
    assert entry.version == redis.__version__
    sync_state(redis_server)
    async_state(redis_server)
    assert counts("redis") == {"configured": 2, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}
    # The raw-socket adapter never saw the redis sockets: one decision per connection.
    assert counts("socket") == {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}


def test_uninstall_restores_identity_and_redis_defaults(install, redis_server, baseline):
    install(profile="fast-failover")
    for (owner, name), original in ORIGINALS.items():
        assert vars(owner)[name] is not original
    assert sync_state(redis_server) == expected(FAST)
    assert async_state(redis_server) == expected(FAST)
    kapatch.uninstall()
    for (owner, name), original in {**ORIGINALS, **UNTOUCHED}.items():
        assert vars(owner)[name] is original
    assert sync_state(redis_server) == baseline["sync"]
    assert async_state(redis_server) == baseline["asyncio"]


def test_unix_socket_connections_are_not_patched(install):
    install()
    for (owner, name), original in UNTOUCHED.items():
        assert vars(owner)[name] is original
    assert "_connect" in vars(redis.connection.UnixDomainSocketConnection)


def test_connection_created_before_install_connects_with_the_policy(install, redis_server):
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    connection = client.connection_pool.make_connection()
    try:
        install(profile="fast-failover")
        connection.connect()
        assert kapatch.inspect(connection._sock) == expected(FAST)
        # redis's own attributes are as the application left them.
        assert connection.socket_keepalive == (True if REDIS_VERSION >= (8,) else None)
    finally:
        connection.disconnect()
        client.close()


def test_adapter_metadata():
    assert RedisAdapter.name == "redis"
    assert RedisAdapter.unavailable_reason() is None
    assert RedisAdapter.supported_range() == ">=5, <9"


# --------------------------------------------------------------------------- import after install

_AFTER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import kapatch
    assert "redis" not in sys.modules
    kapatch.install(environ={"KAPATCH_REDIS_IDLE": "19s"})
    import redis, redis.asyncio
    host, port = sys.argv[1], int(sys.argv[2])
    def state(sock):
        s = kapatch.inspect(sock)
        return [s.enabled, s.idle, s.interval, s.count, s.user_timeout_ms]
    conn = redis.Connection(host=host, port=port)
    conn.connect()
    sync = state(conn._sock)
    conn.disconnect()
    async def main():
        conn = redis.asyncio.Connection(host=host, port=port)
        await conn.connect()
        found = state(conn._writer.transport.get_extra_info("socket"))
        await conn.disconnect()
        return found
    counts = dict(next(a for a in kapatch.status().adapters if a.name == "redis").counts)
    print(json.dumps({"sync": sync, "asyncio": asyncio.run(main()), "counts_before_async": counts}))
    """
)


def test_redis_imported_after_install(redis_server):
    result = subprocess.run(
        [sys.executable, "-c", _AFTER_SCRIPT, redis_server.host, str(redis_server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    want = expected(BALANCED.evolve(idle="19s"))
    row = [want.enabled, want.idle, want.interval, want.count, want.user_timeout_ms]
    assert found["sync"] == row
    assert found["asyncio"] == row
    assert found["counts_before_async"]["configured"] == 1


# --------------------------------------------------------------------------- TLS and Sentinel


class _ServerExited(Exception):
    pass


@contextlib.contextmanager
def private_redis(
    name: str, arguments: Callable[[int, Path], list[str]], *, port_below: int | None = None
) -> Iterator[tuple[int, Path]]:
    """Start ``redis-server <arguments(port, workdir)>`` on a free loopback port: (port, workdir).

    Ready when it answers PING. A start that fails (e.g. the port was taken between
    choosing and binding it) is retried on a fresh port; stopped by its own pid.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not found")
    workdir = Path(tempfile.mkdtemp(prefix=f"kapatch-{name}-"))
    try:
        for _ in range(3):
            port = free_port(ipv6=False, below=port_below)
            with (workdir / "stdout.log").open("ab") as output:
                proc = subprocess.Popen(
                    [exe, *arguments(port, workdir)], stdin=subprocess.DEVNULL, stdout=output, cwd=workdir
                )
            try:
                _wait_for(lambda: redis.Redis(port=port, socket_timeout=2).ping(), proc)  # noqa: B023
                yield port, workdir
                return
            except _ServerExited:
                continue
            finally:
                proc.terminate()
                proc.wait(timeout=10)
        logs = [workdir / "stdout.log", workdir / "redis.log"]
        tail = "".join(log.read_text(errors="replace")[-2000:] for log in logs if log.exists())
        pytest.fail(f"{name} redis-server did not start:\n{tail}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for(ready: Callable[[], object], proc: subprocess.Popen[bytes] | None, attempts: int = 100) -> None:
    for _ in range(attempts):  # bounded: at most ~10 s
        if proc is not None and proc.poll() is not None:
            raise _ServerExited(proc.returncode)
        try:
            if ready():
                return
        except (redis.RedisError, OSError):
            pass
        if proc is None:
            time.sleep(0.1)
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):  # a pause that ends early if it dies
            proc.wait(timeout=0.1)
    pytest.fail("server did not become ready")


def _common(port: int, workdir: Path) -> list[str]:
    return [
        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no",
        "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[int, Path]]:
    """A second private redis-server speaking TLS on its port, plain on a second one: (TLS port, CA)."""
    ports: dict[str, int] = {}

    def arguments(port: int, workdir: Path) -> list[str]:
        cert, key = self_signed_cert(workdir)
        ports["tls"] = free_port(ipv6=False)
        return [
            "--port", str(port), "--tls-port", str(ports["tls"]), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
            *_common(port, workdir),
        ]  # fmt: skip

    with private_redis("redis-tls", arguments) as (_, workdir):
        yield ports["tls"], workdir / "cert.pem"


def test_ssl_connection_sync_and_asyncio(install, tls_redis):
    port, ca = tls_redis
    install(profile="fast-failover")
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca))
    try:
        connection = client.connection_pool.get_connection(*_pool_args())
        assert isinstance(connection, redis.connection.SSLConnection)
        try:
            assert kapatch.inspect(connection._sock) == expected(FAST)
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()

    async def tls_async() -> KeepaliveState:
        connection = redis.asyncio.connection.SSLConnection(host="127.0.0.1", port=port, ssl_ca_certs=str(ca))
        await connection.connect()
        try:
            return kapatch.inspect(connection._writer.transport.get_extra_info("socket"))
        finally:
            await connection.disconnect()

    assert asyncio.run(tls_async()) == expected(FAST)
    assert counts("redis")["configured"] == 2


@pytest.fixture(scope="module")
def sentinel(redis_server: RedisServer) -> Iterator[int]:
    """A redis-sentinel monitoring the private redis-server as 'kapatch': its port."""

    def arguments(port: int, workdir: Path) -> list[str]:
        conf = workdir / "sentinel.conf"  # sentinel rewrites its config file: a private one
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {workdir}\n"
            f"logfile {workdir / 'redis.log'}\n"
            f"sentinel monitor kapatch {redis_server.host} {redis_server.port} 1\n"
        )
        return [str(conf), "--sentinel"]

    with private_redis("redis-sentinel", arguments) as (port, _):
        yield port


def test_sentinel_master_and_sentinel_connections(install, redis_server, sentinel):
    # The master gets a per-destination rule; the sentinel connection the redis policy.
    install(profile="fast-failover", rules=[Rule.build(f"*:{redis_server.port}", idle="12s")])
    manager = redis.sentinel.Sentinel([("127.0.0.1", sentinel)], socket_timeout=5)
    master = manager.master_for("kapatch", socket_timeout=5)
    try:
        assert master.ping()
        (connection,) = master.connection_pool._available_connections
        assert isinstance(connection, redis.sentinel.SentinelManagedConnection)
        assert kapatch.inspect(connection._sock) == expected(FAST.evolve(idle="12s"))
        (sentinel_client,) = manager.sentinels
        (sentinel_connection,) = sentinel_client.connection_pool._available_connections
        assert kapatch.inspect(sentinel_connection._sock) == expected(FAST)
    finally:
        master.close()
        for client in manager.sentinels:
            client.close()


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    """A one-node redis cluster (every slot on one private server): its port."""

    def arguments(port: int, workdir: Path) -> list[str]:
        return [
            "--port", str(port), "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / f"nodes-{port}.conf"), *_common(port, workdir),
        ]  # fmt: skip

    # A cluster node's bus listens on port + 10000: redis refuses ports above 55535.
    with private_redis("redis-cluster", arguments, port_below=55536) as (port, _):
        admin = redis.Redis(port=port, socket_timeout=5)
        try:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            _wait_for(lambda: b"cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"), None)
        finally:
            admin.close()
        yield port


def test_cluster_sync_and_asyncio(install, cluster_port):
    install(profile="fast-failover", overrides={"redis": {"idle": "11s"}})
    want = expected(FAST.evolve(idle="11s"))
    cluster = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_port, socket_timeout=5)
    try:
        assert cluster.set("kapatch", "1")
        pool = cluster.get_node_from_key("kapatch").redis_connection.connection_pool
        sockets = [c._sock for c in pool._available_connections]
        assert sockets
        assert all(kapatch.inspect(s) == want for s in sockets)
    finally:
        cluster.close()

    async def cluster_async() -> list[KeepaliveState]:
        client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port, socket_timeout=5)
        try:
            assert await client.set("kapatch", "2")
            node = client.get_node_from_key("kapatch")
            return [kapatch.inspect(c._writer.transport.get_extra_info("socket")) for c in node._free]
        finally:
            await client.aclose() if hasattr(client, "aclose") else await client.close()

    found = asyncio.run(cluster_async())
    assert found
    assert all(state == want for state in found)
    assert counts("socket")["configured"] == 0


# --------------------------------------------------------------------------- objects kapatch cannot read


class _MockSocket:
    """A socket-like test double as redis-py's own suite uses: no getsockopt, records setsockopt."""

    def __init__(self, *_: object) -> None:
        self.options: list[tuple[int, int, object]] = []

    def setsockopt(self, level: int, option: int, value: object) -> None:
        self.options.append((level, option, value))

    def settimeout(self, _: object) -> None:
        pass

    def connect(self, _: object) -> None:
        pass

    def close(self) -> None:
        pass


def _mock_connect(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> list[tuple[int, int, Any]]:
    """``Connection._connect`` with redis.connection's ``socket.socket`` a test double: its setsockopts."""
    fake = type(sys)("socket")
    fake.__dict__.update(vars(socket))
    fake.socket = _MockSocket  # type: ignore[attr-defined]
    monkeypatch.setattr(redis.connection, "socket", fake)
    connection = redis.Connection(host=redis_server.host, port=redis_server.port)
    try:
        sock = connection._connect()
    finally:
        monkeypatch.undo()
    assert isinstance(sock, _MockSocket)
    return sock.options


def test_connect_returning_a_socket_double_behaves_as_without_kapatch(install, redis_server, monkeypatch):
    without = _mock_connect(monkeypatch, redis_server)
    assert without  # TCP_NODELAY, and on redis 8 its keepalive options
    install()
    with_kapatch = _mock_connect(monkeypatch, redis_server)
    # The same writes (after connect instead of before: a double has no kernel to mind).
    assert sorted(with_kapatch) == sorted(without)
    assert counts("redis")["failed"] == 1


class _ReadOnlyKeepalive(redis.Connection):
    """A custom connection class whose socket_keepalive kapatch cannot switch off."""

    @property  # type: ignore[override]
    def socket_keepalive(self) -> bool:
        return True

    @socket_keepalive.setter
    def socket_keepalive(self, value: object) -> None:
        if "_set_once" in vars(self):  # redis's own __init__ sets it once; kapatch's write fails
            raise AttributeError("read-only")
        self._set_once = True


def test_connection_kapatch_cannot_change_connects_as_without_kapatch(install, redis_server):
    install(profile="fast-failover")
    connection = _ReadOnlyKeepalive(host=redis_server.host, port=redis_server.port)
    try:
        connection.connect()  # no exception from kapatch
        state = kapatch.inspect(connection._sock)
    finally:
        connection.disconnect()
    # redis wrote its own options, as without kapatch; the socket then connected as any bare
    # socket does (the socket adapter reads it: SO_KEEPALIVE, set by redis, and redis 8's
    # 30/5/3 look chosen and stay; kernel-default timings get the policy).
    assert state.enabled
    if REDIS_VERSION >= (8,):
        assert (state.idle, state.interval, state.count) == (30, 5, 3)
    assert counts("redis")["failed"] == 1
    assert counts("redis")["configured"] == 0
    assert counts("socket")["configured"] + counts("socket")["respected"] == 1
