"""The redis adapter's pool half: heartbeat -> health_check_interval (bounded PING), max_idle.

Real private redis-servers on loopback. The frozen-server tests start their own server
and SIGSTOP it by pid (always SIGCONT in the fixture's finally), never the session one.
Every blocking call runs under a cap. Runs on redis-py 8.x and 5.x.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import RedisServer, start_redis

import kapatch
from kapatch import Rule
from kapatch.adapters.redis import RedisAdapter

HCI = "health_check_interval"
CAP = 4.0  # seconds a plain client is watched before it is declared blocked
RETRIES = 2  # the clients' own Retry in the frozen tests: 3 attempts, no backoff

# Taken at import, before any test installs kapatch: disable() must put exactly these back.
ORIGINALS = {
    (owner, name): vars(owner).get(name)
    for module in (redis.connection, redis.asyncio.connection)
    for owner, name in (
        (module.ConnectionPool, "__init__"),
        (module.ConnectionPool, "release"),
        (module.BlockingConnectionPool, "release"),
        (module.AbstractConnection, "connect"),
        (module.AbstractConnection, "_send_ping"),
        (module.AbstractConnection, "_ping_failed"),
        (module.AbstractConnection, "on_connect"),
        (module.AbstractConnection, "on_connect_check_health"),
    )
} | {(cls, "__init__"): vars(cls)["__init__"] for cls in (redis.Redis, redis.asyncio.Redis)}


def pool(adapter: str = "redis") -> dict[str, int]:
    return dict(kapatch.status().adapter(adapter).pool)


@pytest.fixture
def frozen_server() -> Iterator[tuple[RedisServer, Callable[[], None]]]:
    """A private redis-server and a function that freezes it (SIGSTOP); resumed in finally."""
    with start_redis() as server:
        try:
            yield server, lambda: os.kill(server.pid, signal.SIGSTOP)
        finally:
            os.kill(server.pid, signal.SIGCONT)


def run_capped(call: Callable[[], Any], cap: float = CAP) -> tuple[str, float, object]:
    """Run *call* in a daemon thread for at most *cap* s: ("blocked"|"returned"|"raised", seconds, result)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["returned"] = call()
        except Exception as error:
            outcome["raised"] = error

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(cap)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        return "blocked", elapsed, None
    ((how, result),) = outcome.items()
    return how, elapsed, result


def bound(timeout: float, retries: int = RETRIES) -> float:
    """The worst case with a frozen server: the health check's attempts (its PING, then a fresh
    connection's handshake per retry) and the client's own retries (a handshake each), each
    cut at heartbeat_timeout; NoBackoff, so no sleeps; plus 1 s of slack for a loaded box."""
    return (2 * retries + 1) * timeout + 1.0


# --------------------------------------------------------------------------- the knob


@pytest.mark.parametrize("client", [redis.Redis, redis.asyncio.Redis], ids=["sync", "asyncio"])
def test_heartbeat_becomes_health_check_interval(install, redis_server, client):
    install(heartbeat="2s")
    r = client(host=redis_server.host, port=redis_server.port)
    assert r.connection_pool.connection_kwargs[HCI] == 2.0
    connection = r.connection_pool.make_connection()
    assert connection.health_check_interval == 2.0


def test_environment_carries_heartbeat_per_adapter(install, redis_server):
    install(environ={"KAPATCH_REDIS_HEARTBEAT": "3s", "KAPATCH_REDIS_HEARTBEAT_TIMEOUT": "250ms"})
    r = redis.Redis(host=redis_server.host, port=redis_server.port)
    value = r.connection_pool.connection_kwargs[HCI]
    assert value == 3.0
    assert value.timeout == 0.25  # the proof's reply deadline rides along


def test_without_heartbeat_nothing_changes(install, redis_server):
    install()
    assert (
        redis.Redis(host=redis_server.host, port=redis_server.port).connection_pool.connection_kwargs[HCI]
        == 0
    )
    assert HCI not in redis.ConnectionPool(host=redis_server.host, port=redis_server.port).connection_kwargs


@pytest.mark.parametrize("given", [7, 0], ids=["seven", "explicit-zero"])
def test_respect_keeps_the_applications_value(install, redis_server, given):
    install(heartbeat="2s")
    sync = redis.Redis(host=redis_server.host, port=redis_server.port, health_check_interval=given)
    aio = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port, health_check_interval=given)
    url = redis.ConnectionPool.from_url(f"{redis_server.url}?health_check_interval={given}")
    for kwargs in (
        sync.connection_pool.connection_kwargs,
        aio.connection_pool.connection_kwargs,
        url.connection_kwargs,
    ):
        assert kwargs[HCI] == given
        assert type(kwargs[HCI]) is int  # not kapatch's: its PING is redis-py's own, unbounded


def test_override_puts_the_policy_over_the_applications_value(install, redis_server):
    install(heartbeat="2s", mode="override")
    for value in (7, 0):
        r = redis.Redis(host=redis_server.host, port=redis_server.port, health_check_interval=value)
        assert r.connection_pool.connection_kwargs[HCI] == 2.0
    url = redis.ConnectionPool.from_url(f"{redis_server.url}?health_check_interval=9")
    assert url.connection_kwargs[HCI] == 2.0


def test_pools_sentinel_and_cluster_nodes_get_it(install, redis_server):
    install(heartbeat="2s")
    assert redis.ConnectionPool(host=redis_server.host, port=redis_server.port).connection_kwargs[HCI] == 2.0
    assert redis.from_url(redis_server.url).connection_pool.connection_kwargs[HCI] == 2.0
    assert redis.BlockingConnectionPool(host=redis_server.host).connection_kwargs[HCI] == 2.0
    sentinel = redis.sentinel.Sentinel([(redis_server.host, redis_server.port)])
    assert sentinel.master_for("mymaster").connection_pool.connection_kwargs[HCI] == 2.0
    assert sentinel.sentinels[0].connection_pool.connection_kwargs[HCI] == 2.0
    # The asyncio cluster builds its nodes' connections from its own kwargs, without a pool.
    cluster = redis.asyncio.RedisCluster(host=redis_server.host, port=redis_server.port)
    (node,) = cluster.nodes_manager.startup_nodes.values()
    assert node.connection_kwargs[HCI] == 2.0
    # (The sync cluster's nodes are Redis(host, port, **kwargs) clients: the Redis hook above.)


def test_a_skip_rule_leaves_redis_alone(install, redis_server):
    install(heartbeat="2s", rules=[Rule.build(f"*:{redis_server.port}", skip=True)])
    assert (
        redis.Redis(host=redis_server.host, port=redis_server.port).connection_pool.connection_kwargs[HCI]
        == 0
    )


def test_live_server_heartbeat_is_counted_only_when_it_fires(install, redis_server):
    install(heartbeat="200ms")
    r = redis.Redis(host=redis_server.host, port=redis_server.port)
    r.ping()  # a fresh connection: redis-py itself checks it during its handshake
    at_connect = pool()["heartbeats_sent"]
    for _ in range(20):  # back to back: redis-py's interval has not passed, no PING
        r.ping()
    assert pool()["heartbeats_sent"] == at_connect
    time.sleep(0.3)
    assert r.get("missing") is None
    assert pool() == {"heartbeats_sent": at_connect + 1, "heartbeats_failed": 0, "replaced": 0, "evicted": 0}
    r.close()


# --------------------------------------------------------------------------- a frozen server


def _sync_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), RETRIES))


def test_frozen_server_without_kapatch_blocks(frozen_server):
    server, freeze = frozen_server
    r = _sync_client(server)
    r.set("k", "v")
    freeze()
    time.sleep(0.6)
    how, elapsed, _ = run_capped(lambda: r.get("k"))
    assert how == "blocked" and elapsed >= CAP  # no socket_timeout: it waits for ever


def test_frozen_server_with_heartbeat_fails_promptly_then_recovers(install, frozen_server):
    server, freeze = frozen_server
    install(heartbeat="500ms", heartbeat_timeout="300ms")
    r = _sync_client(server)
    r.set("k", "v")
    freeze()
    time.sleep(0.6)  # past the heartbeat interval: the next command proves the connection first
    how, elapsed, error = run_capped(lambda: r.get("k"))
    assert how == "raised", (how, elapsed)
    assert isinstance(error, (redis.TimeoutError, redis.ConnectionError))
    assert elapsed <= bound(0.3)
    counts = pool()
    assert counts["heartbeats_failed"] >= 1 and counts["replaced"] >= 1
    assert counts["heartbeats_sent"] >= counts["heartbeats_failed"]
    os.kill(server.pid, signal.SIGCONT)
    assert run_capped(lambda: r.get("k"))[::2] == ("returned", b"v")  # a fresh working connection


def _async_client(server: RedisServer) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(
        host=server.host, port=server.port, retry=redis.asyncio.retry.Retry(NoBackoff(), RETRIES)
    )


async def _frozen_async(server: RedisServer, freeze: Callable[[], None]) -> tuple[str, float, object]:
    r = _async_client(server)
    await r.set("k", "v")
    freeze()
    await asyncio.sleep(0.6)
    started = time.monotonic()
    try:
        result: tuple[str, object] = ("returned", await asyncio.wait_for(r.get("k"), CAP))
    except asyncio.TimeoutError:
        result = ("blocked", None)
    except Exception as error:
        result = ("raised", error)
    elapsed = time.monotonic() - started
    try:
        if result[0] == "raised":
            os.kill(server.pid, signal.SIGCONT)
            assert await asyncio.wait_for(r.get("k"), CAP) == b"v"  # a fresh working connection
    finally:
        await asyncio.wait_for(r.aclose() if hasattr(r, "aclose") else r.close(), CAP)
    return result[0], elapsed, result[1]


def test_frozen_server_asyncio_without_kapatch_blocks(frozen_server):
    how, elapsed, _ = asyncio.run(_frozen_async(*frozen_server))
    assert how == "blocked" and elapsed >= CAP


def test_frozen_server_asyncio_with_heartbeat_fails_promptly_then_recovers(install, frozen_server):
    install(heartbeat="500ms", heartbeat_timeout="300ms")
    how, elapsed, error = asyncio.run(_frozen_async(*frozen_server))
    assert how == "raised", (how, elapsed)
    assert isinstance(error, (redis.TimeoutError, redis.ConnectionError))
    assert elapsed <= bound(0.3)
    counts = pool()
    assert counts["heartbeats_failed"] >= 1 and counts["replaced"] >= 1


def test_no_handshake_connection_is_proved_before_its_first_command(install, frozen_server):
    """lib_name=None: a fresh connection reads nothing on connect; kapatch's PING goes first."""
    server, freeze = frozen_server
    install(heartbeat="30s", heartbeat_timeout="300ms")
    quiet = {"lib_name": None, "lib_version": None}  # no CLIENT SETINFO on connect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # redis-py 8 prefers driver_info
        r = redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0), **quiet)
    freeze()
    how, elapsed, _ = run_capped(lambda: r.get("k"))
    assert how == "raised" and elapsed <= bound(0.3, retries=0)


def test_respected_interval_is_redis_pys_own_unbounded_ping(install, frozen_server):
    server, freeze = frozen_server
    install(heartbeat="500ms", heartbeat_timeout="300ms")
    r = redis.Redis(host=server.host, port=server.port, health_check_interval=1, retry=Retry(NoBackoff(), 0))
    r.set("k", "v")
    freeze()
    time.sleep(1.1)
    how, _, _ = run_capped(lambda: r.get("k"), cap=2.0)
    assert how == "blocked"  # the application's own check, as redis-py does it
    assert pool()["heartbeats_sent"] == 0


# --------------------------------------------------------------------------- max_idle


@pytest.mark.parametrize("pool_class", [redis.ConnectionPool, redis.BlockingConnectionPool])
def test_max_idle_evicts_at_hand_out(install, redis_server, pool_class):
    install(max_idle="300ms")
    r = redis.Redis(connection_pool=pool_class(host=redis_server.host, port=redis_server.port))
    try:
        r.ping()
        (first,) = _idle_sockets(r)
        r.ping()  # reused at once: the same socket
        assert _idle_sockets(r) == [first]
        time.sleep(0.45)
        r.ping()
        (second,) = _idle_sockets(r)
        assert second is not first
        assert pool()["evicted"] == 1
    finally:
        r.connection_pool.disconnect()  # the application's own pool: close() leaves it open


def test_without_max_idle_the_socket_is_kept(install, redis_server):
    install()
    r = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        r.ping()
        (first,) = _idle_sockets(r)
        time.sleep(0.4)
        r.ping()
        assert _idle_sockets(r) == [first]
    finally:
        r.close()  # no socket left over for later tests (the audit's) to find
    assert (
        vars(redis.connection.AbstractConnection)["connect"]
        is ORIGINALS[(redis.connection.AbstractConnection, "connect")]
    )


def _idle_sockets(r: redis.Redis) -> list[object]:
    available = getattr(r.connection_pool, "_available_connections", None)
    if available is None:  # BlockingConnectionPool: a queue with None placeholders
        available = [c for c in r.connection_pool.pool.queue if c is not None]
    return [c._sock for c in available]


def test_max_idle_asyncio(install, redis_server):
    install(max_idle="300ms")

    async def main() -> tuple[object, object, object]:
        r = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
        await r.ping()
        first = r.connection_pool._available_connections[0]._writer
        await r.ping()
        again = r.connection_pool._available_connections[0]._writer
        await asyncio.sleep(0.45)
        await r.ping()
        later = r.connection_pool._available_connections[0]._writer
        await r.aclose() if hasattr(r, "aclose") else await r.close()
        return first, again, later

    first, again, later = asyncio.run(main())
    assert again is first and later is not first
    assert pool()["evicted"] == 1


@pytest.mark.parametrize("module", [redis.connection, redis.asyncio.connection], ids=["sync", "asyncio"])
def test_max_idle_hooks_take_redis_pys_own_parameters(install, redis_server, module):
    """The per-command hooks are closures with redis-py's parameters (no *args/**kwargs to
    build and spread), and a wrong call fails with redis-py's own message."""
    install(max_idle="1h")
    for owner, name, parameters in (
        (module.ConnectionPool, "release", ("pool", "connection")),
        (module.BlockingConnectionPool, "release", ("pool", "connection")),
        (module.AbstractConnection, "connect", ("connection",)),
    ):
        hook = vars(owner)[name]
        assert hook.__wrapped__ is getattr(ORIGINALS[(owner, name)], "__func__", ORIGINALS[(owner, name)])
        assert hook.__code__.co_varnames[: hook.__code__.co_argcount] == parameters
        assert hook.__qualname__ == hook.__wrapped__.__qualname__
    pool = module.ConnectionPool(host=redis_server.host, port=redis_server.port)
    with pytest.raises(TypeError) as hooked:
        pool.release()
    kapatch.uninstall()
    with pytest.raises(TypeError) as plain:
        pool.release()
    assert str(hooked.value) == str(plain.value)


class _OtherPool:
    """A pool whose release() has parameters kapatch does not know: the generic hook passes them."""

    def release(self, connection: Any, *extra: Any, reason: str = "") -> None:
        self.released = (connection, extra, reason)


class _OtherConnection:
    _sock = object()
    connected: object = None
    disconnected = False

    def connect(self, timeout: float | None = None) -> None:
        self.connected = timeout

    def disconnect(self) -> None:
        self.disconnected = True


def test_max_idle_on_unknown_parameters_passes_every_argument():
    from types import SimpleNamespace

    from kapatch.adapters._redis_pool import _SyncHooks

    hooks = _SyncHooks(SimpleNamespace(name="redis", context=None))  # type: ignore[arg-type]
    hooks.max_idle = 0.0  # any idle time is too long
    release = hooks.release_hook(_OtherPool.release)
    connect = hooks.connect_hook(_OtherConnection.connect)
    assert release.__code__.co_flags & 0x0C and connect.__code__.co_flags & 0x0C  # the generic hooks
    pool, connection = _OtherPool(), _OtherConnection()
    connect(connection, timeout=3)  # never released: not evicted
    assert (connection.connected, connection.disconnected) == (3, False)
    release(pool, connection, "a", reason="b")
    assert pool.released == (connection, ("a",), "b")
    time.sleep(0.01)
    connect(connection, 5)
    assert (connection.connected, connection.disconnected) == (5, True)
    with pytest.raises(TypeError):
        connect()  # an unbound call: connect()'s own error


# --------------------------------------------------------------------------- status and disable


def test_status_names_the_mechanisms(install):
    install(heartbeat="2s", max_idle="60s")
    entry = kapatch.status().adapter("redis")
    assert "health_check_interval" in entry.pool_support and "max_idle" in entry.pool_support
    assert RedisAdapter.heartbeat_mechanism and RedisAdapter.max_idle_mechanism


def test_uninstall_restores_every_hook(install, redis_server):
    install(heartbeat="2s", max_idle="1s")
    assert (
        vars(redis.connection.AbstractConnection)["_send_ping"]
        is not ORIGINALS[(redis.connection.AbstractConnection, "_send_ping")]
    )
    kapatch.uninstall()
    for (owner, name), original in ORIGINALS.items():
        assert vars(owner).get(name) is original, (owner, name)
    assert (
        redis.Redis(host=redis_server.host, port=redis_server.port).connection_pool.connection_kwargs[HCI]
        == 0
    )
