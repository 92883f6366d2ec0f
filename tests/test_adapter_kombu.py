"""kombu (celery's broker layer) over Redis and over AMQP, against private real servers.

kombu has no adapter of its own: its Redis transport goes through redis-py (the redis
adapter) and its ``pyamqp`` transport through py-amqp (the amqp adapter). What matters
is kombu's way of calling them: the Redis transport passes ``socket_keepalive=None,
socket_keepalive_options=None`` (not a choice: without kapatch keepalive stays off),
and py-amqp writes its own defaults after connecting. Options are read back from the
live sockets of ``Connection.default_channel``.
"""

from __future__ import annotations

import socket

import kombu

import kapatch
from kapatch import KeepaliveState, Policy
from kapatch.profiles import PROFILES

FAST = PROFILES["fast-failover"].policy


def expected(policy: Policy) -> KeepaliveState:
    return KeepaliveState(True, policy.idle, policy.interval, policy.count, policy.user_timeout_ms or 0)


def counts(adapter: str) -> dict[str, int]:
    (entry,) = [a for a in kapatch.status().adapters if a.name == adapter]
    return dict(entry.counts)


def redis_channel_state(redis_server, **transport_options) -> KeepaliveState:
    with kombu.Connection(redis_server.url, transport_options=transport_options) as connection:
        channel = connection.default_channel
        client = channel.client
        assert client.ping()
        pool = client.connection_pool
        (pooled,) = pool._available_connections
        assert pooled.socket_keepalive == transport_options.get("socket_keepalive")  # None: kombu's default
        return kapatch.inspect(pooled._sock)


def test_kombu_redis_transport_without_kapatch_has_keepalive_off(redis_server):
    kapatch.uninstall()
    assert not redis_channel_state(redis_server).enabled


def test_kombu_redis_transport_carries_the_redis_policy(install, redis_server):
    install(profile="fast-failover", overrides={"redis": {"idle": "13s"}})
    assert redis_channel_state(redis_server) == expected(FAST.evolve(idle="13s"))
    assert counts("redis")["configured"] >= 1
    assert counts("redis")["respected"] == 0


def test_kombu_redis_transport_options_win_in_respect_mode(install, redis_server):
    install(profile="fast-failover")
    found = redis_channel_state(
        redis_server, socket_keepalive=True, socket_keepalive_options={socket.TCP_KEEPCNT: 7}
    )
    assert found == KeepaliveState(True, FAST.idle, FAST.interval, 7, (FAST.idle + FAST.interval * 7) * 1000)


def amqp_channel_state(rabbitmq_server, **transport_options) -> KeepaliveState:
    url = f"pyamqp://guest:guest@{rabbitmq_server.host}:{rabbitmq_server.port}//"
    with kombu.Connection(url, transport_options=transport_options) as connection:
        channel = connection.default_channel
        assert channel.is_open
        return kapatch.inspect(connection.connection.transport.sock)


def test_kombu_amqp_transport_without_kapatch_has_py_amqps_values(rabbitmq_server):
    kapatch.uninstall()
    assert amqp_channel_state(rabbitmq_server) == KeepaliveState(True, 60, 10, 9, 1000)


def test_kombu_amqp_transport_carries_the_amqp_policy(install, rabbitmq_server):
    install(profile="fast-failover", environ={"KAPATCH_AMQP_COUNT": "4"})
    assert amqp_channel_state(rabbitmq_server) == expected(FAST.evolve(count="4"))
    assert counts("amqp")["configured"] == 1


def test_kombu_amqp_socket_settings_win(install, rabbitmq_server):
    install(profile="fast-failover")
    found = amqp_channel_state(rabbitmq_server, socket_settings={socket.TCP_USER_TIMEOUT: 7000})
    assert found == KeepaliveState(True, FAST.idle, FAST.interval, FAST.count, 7000)
