"""The py-amqp adapter against a private RabbitMQ node on loopback (tests/servers.py).

Options are read back with getsockopt from the live, handshaken connection's socket
(``connection.transport.sock``). py-amqp rewrites the options after connect with its
hard-coded 60/10/9 and a 1 s user timeout: library defaults the policy replaces; the
application's ``socket_settings`` entries are choices, kept field by field.
"""

from __future__ import annotations

import socket

import amqp
import amqp.transport

import kapatch
from kapatch import KeepaliveState, Policy, Rule
from kapatch.adapters.amqp import AmqpAdapter, chosen_in_socket_settings
from kapatch.profiles import PROFILES

BALANCED = PROFILES["balanced"].policy
FAST = PROFILES["fast-failover"].policy
PY_AMQP_OWN = KeepaliveState(True, 60, 10, 9, 1000)
ORIGINAL = vars(amqp.transport._AbstractTransport)["connect"]


def expected(policy: Policy) -> KeepaliveState:
    return KeepaliveState(True, policy.idle, policy.interval, policy.count, policy.user_timeout_ms or 0)


def counts(adapter: str) -> dict[str, int]:
    (entry,) = [a for a in kapatch.status().adapters if a.name == adapter]
    return dict(entry.counts)


def kept(adapter: str) -> dict[str, int]:
    (entry,) = [a for a in kapatch.status().adapters if a.name == adapter]
    return dict(entry.kept)


def state(server, **kwargs) -> KeepaliveState:
    connection = amqp.Connection(f"{server.host}:{server.port}", connect_timeout=10, **kwargs)
    connection.connect()
    try:
        assert connection.connected  # the AMQP handshake completed
        return kapatch.inspect(connection.transport.sock)
    finally:
        connection.close()


def test_without_kapatch_py_amqp_writes_its_own_values(rabbitmq_server):
    kapatch.uninstall()
    assert state(rabbitmq_server) == PY_AMQP_OWN


def test_policy_replaces_py_amqps_defaults_in_respect_mode(install, rabbitmq_server):
    install()
    assert state(rabbitmq_server) == expected(BALANCED)
    # Decided once at connect, put back after py-amqp's writes without counting again.
    assert counts("amqp") == {"configured": 1, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}
    assert counts("socket")["configured"] == 0


def test_per_adapter_override(install, rabbitmq_server):
    install(environ={"KAPATCH_PROFILE": "fast-failover", "KAPATCH_AMQP_IDLE": "17s"})
    assert state(rabbitmq_server) == expected(FAST.evolve(idle="17s"))


def test_socket_settings_win_field_by_field(install, rabbitmq_server):
    install(profile="fast-failover")
    settings = {socket.TCP_KEEPIDLE: 33, socket.TCP_USER_TIMEOUT: 5000}
    assert state(rabbitmq_server, socket_settings=settings) == KeepaliveState(
        True, 33, FAST.interval, FAST.count, 5000
    )
    assert kept("amqp") == {"idle": 1, "user_timeout": 1}


def test_socket_settings_timings_drive_the_auto_user_timeout(install, rabbitmq_server):
    install(profile="fast-failover")  # user timeout "auto": idle + interval * count
    settings = {socket.TCP_KEEPIDLE: 40, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 2}
    assert state(rabbitmq_server, socket_settings=settings) == KeepaliveState(True, 40, 2, 2, 44_000)


def test_override_mode_replaces_socket_settings(install, rabbitmq_server):
    install(profile="fast-failover", mode="override")
    settings = {socket.TCP_KEEPIDLE: 33, socket.TCP_USER_TIMEOUT: 5000}
    assert state(rabbitmq_server, socket_settings=settings) == expected(FAST)


def test_skip_rule_leaves_py_amqps_values(install, rabbitmq_server):
    install(rules=[Rule.build(f"*:{rabbitmq_server.port}", skip=True)])
    assert state(rabbitmq_server) == PY_AMQP_OWN
    assert counts("amqp")["skipped"] == 1


def test_non_keepalive_socket_settings_are_no_choice():
    assert chosen_in_socket_settings({socket.TCP_NODELAY: 1}) == frozenset()
    assert chosen_in_socket_settings(None) == frozenset()
    assert chosen_in_socket_settings({socket.TCP_KEEPCNT: 3, "x": 1}) == {"count"}


class _UnreadableTransport(amqp.transport.TCPTransport):
    """A transport whose settings kapatch cannot read (py-amqp reads them later, fine)."""

    reads = 0

    @property
    def socket_settings(self):
        type(self).reads += 1
        if type(self).reads == 1:
            raise RuntimeError("unreadable")

    @socket_settings.setter
    def socket_settings(self, value):
        pass


def test_unreadable_transport_connects_as_without_kapatch(install, rabbitmq_server):
    install()
    transport = _UnreadableTransport(f"{rabbitmq_server.host}:{rabbitmq_server.port}", connect_timeout=5)
    try:
        transport.connect()  # no exception from kapatch
        assert kapatch.inspect(transport.sock) == PY_AMQP_OWN  # as py-amqp made it
    finally:
        transport.close()
    assert counts("amqp")["failed"] == 1


def test_uninstall_restores_identity(install, rabbitmq_server):
    install()
    assert vars(amqp.transport._AbstractTransport)["connect"] is not ORIGINAL
    kapatch.uninstall()
    assert vars(amqp.transport._AbstractTransport)["connect"] is ORIGINAL
    assert state(rabbitmq_server) == PY_AMQP_OWN


def test_adapter_metadata():
    assert AmqpAdapter.unavailable_reason() is None
    assert AmqpAdapter.supported_range() == ">=5, <6"
