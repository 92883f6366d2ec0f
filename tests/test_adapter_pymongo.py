"""The pymongo adapter: sync MongoClient, AsyncMongoClient and motor, options read from the live socket.

Why no real mongod: MongoDB cannot be installed here (no Debian package; the pip/npm
helpers that fetch mongod download binaries from the internet, which fails). It is not
needed for what is tested: pymongo writes its keepalive options before ``connect`` and
nothing after, and its monitor connects as soon as a client is made. So each client
points at a loopback listener that accepts and holds the connection (it never answers
``hello``), and the options are read with getsockopt from the client's own connected
socket, found through /proc/self/fd (``servers.sockets_connected_to``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import motor.motor_asyncio
import pymongo
import pymongo.pool_shared
import pytest
from servers import HoldingListener, start_holding_listener, wait_for_sockets_connected_to

import kapatch
from kapatch import KeepaliveState, Policy, Rule
from kapatch.adapters.pymongo import PymongoAdapter
from kapatch.profiles import PROFILES

BALANCED = PROFILES["balanced"].policy
FAST = PROFILES["fast-failover"].policy
PYMONGO_OWN = KeepaliveState(True, 120, 10, 9, 0)  # pymongo's hard-coded min(kernel, 120/10/9)
ORIGINALS = {
    name: vars(pymongo.pool_shared)[name] for name in ("_create_connection", "_async_create_connection")
}


def expected(policy: Policy) -> KeepaliveState:
    return KeepaliveState(True, policy.idle, policy.interval, policy.count, policy.user_timeout_ms or 0)


def counts(adapter: str) -> dict[str, int]:
    (entry,) = [a for a in kapatch.status().adapters if a.name == adapter]
    return dict(entry.counts)


@pytest.fixture
def listener() -> Iterator[HoldingListener]:
    with start_holding_listener() as server:
        yield server


def _state_of_first_socket(port: int) -> KeepaliveState:
    found = wait_for_sockets_connected_to(port)
    assert found, "the client never connected"
    try:
        return kapatch.inspect(found[0])
    finally:
        for sock in found:
            sock.close()


def sync_state(listener: HoldingListener, **kwargs: object) -> KeepaliveState:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        listener.host, listener.port, serverSelectionTimeoutMS=200, connect=True, **kwargs
    )
    try:  # the monitor thread connects in the background
        return _state_of_first_socket(listener.port)
    finally:
        client.close()


def async_state(listener: HoldingListener) -> KeepaliveState:
    async def main() -> KeepaliveState:
        client: pymongo.AsyncMongoClient[dict[str, object]] = pymongo.AsyncMongoClient(
            listener.host, listener.port, serverSelectionTimeoutMS=3000
        )
        ping = asyncio.ensure_future(client.admin.command("ping"))
        try:  # the monitor is a task of this loop: poll without blocking it
            for _ in range(300):
                await asyncio.sleep(0.05)
                found = __import__("servers").sockets_connected_to(listener.port)
                if found:
                    try:
                        return kapatch.inspect(found[0])
                    finally:
                        for sock in found:
                            sock.close()
            pytest.fail("AsyncMongoClient never connected")
        finally:
            ping.cancel()
            with contextlib.suppress(BaseException):
                await ping
            await client.close()

    return asyncio.run(main())


def motor_state(listener: HoldingListener) -> KeepaliveState:
    async def main() -> KeepaliveState:
        client = motor.motor_asyncio.AsyncIOMotorClient(
            listener.host, listener.port, serverSelectionTimeoutMS=3000
        )
        ping = asyncio.ensure_future(client.admin.command("ping"))  # motor runs pymongo in threads
        try:
            return await asyncio.to_thread(_state_of_first_socket, listener.port)
        finally:
            ping.cancel()
            with contextlib.suppress(BaseException):
                await ping
            client.close()

    return asyncio.run(main())


CLIENTS = pytest.mark.parametrize(
    "state", [sync_state, async_state, motor_state], ids=["sync", "async", "motor"]
)


@CLIENTS
def test_without_kapatch_pymongo_sets_its_own_values(listener, state):
    kapatch.uninstall()
    assert state(listener) == PYMONGO_OWN


@CLIENTS
def test_policy_replaces_pymongos_hard_coded_values_in_respect_mode(install, listener, state):
    install()  # respect mode: pymongo's 120/10/9 are nobody's choice
    assert state(listener) == expected(BALANCED)
    assert counts("pymongo")["configured"] >= 1
    assert counts("pymongo")["respected"] == 0
    assert counts("socket")["configured"] == 0  # one decision per connection: pymongo's


@CLIENTS
def test_per_adapter_override(install, listener, state):
    install(environ={"KAPATCH_PROFILE": "fast-failover", "KAPATCH_PYMONGO_IDLE": "17s"})
    assert state(listener) == expected(FAST.evolve(idle="17s"))


def test_skip_rule_leaves_pymongos_values(install, listener):
    install(rules=[Rule.build(f"*:{listener.port}", skip=True)])
    assert sync_state(listener) == PYMONGO_OWN
    assert counts("pymongo")["skipped"] >= 1


def test_disabled_adapter_leaves_pymongos_values(install, listener):
    install(adapters=["socket"])  # the socket adapter alone reads pymongo's values as chosen
    assert sync_state(listener).idle == 120


def test_unreadable_address_connects_as_without_kapatch(install, listener):
    # A library object kapatch cannot read: an address that is no (host, port) pair for
    # kapatch, but still is one for pymongo's own code (it unpacks it the same way).
    class Address(tuple):  # type: ignore[type-arg]
        def __iter__(self):  # kapatch's unpacking fails ...
            raise RuntimeError("unreadable")

    install()
    wrapped = pymongo.pool_shared._create_connection
    with pytest.raises(RuntimeError, match="unreadable"):  # ... and so does pymongo's own, unchanged
        wrapped(Address((listener.host, listener.port)), None)
    assert counts("pymongo")["failed"] == 1


def test_uninstall_restores_identity(install):
    install()
    assert all(vars(pymongo.pool_shared)[n] is not f for n, f in ORIGINALS.items())
    kapatch.uninstall()
    assert all(vars(pymongo.pool_shared)[n] is f for n, f in ORIGINALS.items())


def test_adapter_metadata():
    assert PymongoAdapter.unavailable_reason() is None
    assert PymongoAdapter.supported_range() == ">=4, <5"
