"""httpx/httpcore adapter on a real HTTP server; options read back from the live connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest
from servers import ForgetfulHttpServer, start_forgetful_http_server

import kapatch
from kapatch.profiles import PROFILES

FAST = PROFILES["fast-failover"].policy
USER_OPTIONS = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 41),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 4),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
]


def state_of(response: httpx.Response) -> kapatch.KeepaliveState:
    return kapatch.inspect(response.extensions["network_stream"].get_extra_info("socket"))


def get(url: str, **transport_options: object) -> kapatch.KeepaliveState:
    with httpx.Client(transport=httpx.HTTPTransport(**transport_options)) as client:  # type: ignore[arg-type]
        response = client.get(f"{url}/ok")
        assert response.status_code == 200
        return state_of(response)


def get_async(url: str, **transport_options: object) -> kapatch.KeepaliveState:
    async def main() -> kapatch.KeepaliveState:
        transport = httpx.AsyncHTTPTransport(**transport_options)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"{url}/ok")
            assert response.status_code == 200
            return state_of(response)

    return asyncio.run(main())


@pytest.mark.parametrize("fetch", [get, get_async], ids=["sync", "asyncio"])
def test_connection_carries_the_httpx_policy_not_the_socket_one(http_server, fetch):
    kapatch.install(profile="fast-failover", overrides={"socket": {"idle": "50s"}})
    assert fetch(http_server.url).mismatches(FAST) == ()
    status = kapatch.status()
    assert status.adapter("httpx").counts["configured"] == 1
    assert status.adapter("socket").counts["configured"] == 0


@pytest.mark.parametrize("fetch", [get, get_async], ids=["sync", "asyncio"])
def test_per_adapter_override_from_the_environment(http_server, fetch):
    kapatch.install(environ={"KAPATCH_PROFILE": "aws", "KAPATCH_HTTPX_IDLE": "7s"})
    state = fetch(http_server.url)
    assert (state.idle, state.interval, state.count) == (7, 20, 4)


@pytest.mark.parametrize("fetch", [get, get_async], ids=["sync", "asyncio"])
def test_respect_mode_keeps_the_chosen_fields_and_bounds_the_rest_by_them(http_server, fetch):
    """The application's timings stay; the user timeout nobody chose is auto over *its* timings.

    httpcore writes the options after connecting: the policy's auto user timeout is put
    back from what the socket then holds (41 + 4 * 4 s), so it never cuts the
    application's own probes short.
    """
    kapatch.install(profile="fast-failover")
    state = fetch(http_server.url, socket_options=USER_OPTIONS)
    assert (state.enabled, state.idle, state.interval, state.count) == (True, 41, 4, 4)
    assert state.user_timeout_ms == (41 + 4 * 4) * 1000
    status = kapatch.status().adapter("httpx")
    assert status.counts["configured"] == 1
    assert dict(status.kept) == {"enabled": 1, "idle": 1, "interval": 1, "count": 1}


@pytest.mark.parametrize("fetch", [get, get_async], ids=["sync", "asyncio"])
def test_respect_mode_keeps_explicit_socket_options_whole(http_server, fetch):
    """Every field chosen (the user timeout too): nothing of the policy's is written."""
    kapatch.install(profile="fast-failover")
    options = [*USER_OPTIONS, (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 4321)]
    state = fetch(http_server.url, socket_options=options)
    assert (state.enabled, state.idle, state.interval, state.count) == (True, 41, 4, 4)
    assert state.user_timeout_ms == 4321
    assert kapatch.status().adapter("httpx").counts["respected"] == 1


@pytest.mark.parametrize("fetch", [get, get_async], ids=["sync", "asyncio"])
def test_override_mode_wins_over_options_written_after_connect(http_server, fetch):
    kapatch.install(profile="fast-failover", mode="override")
    assert fetch(http_server.url, socket_options=USER_OPTIONS).mismatches(FAST) == ()


def test_non_keepalive_socket_options_are_not_explicit(http_server):
    kapatch.install(profile="fast-failover")
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    assert get(http_server.url, socket_options=nodelay).mismatches(FAST) == ()


def test_skip_rule_by_host_name(http_server):
    port = int(http_server.url.rsplit(":", 1)[1])
    kapatch.install(exclude=["localhost"])
    assert not get(f"http://localhost:{port}").enabled
    assert get(http_server.url).enabled


def test_uninstall_restores_identity_and_the_next_connection(http_server):
    from httpcore._backends.anyio import AnyIOBackend
    from httpcore._backends.sync import SyncBackend

    originals = (vars(SyncBackend)["connect_tcp"], vars(AnyIOBackend)["connect_tcp"])
    kapatch.install()
    assert vars(SyncBackend)["connect_tcp"] is not originals[0]
    kapatch.uninstall()
    assert (vars(SyncBackend)["connect_tcp"], vars(AnyIOBackend)["connect_tcp"]) == originals
    assert vars(SyncBackend)["connect_tcp"] is originals[0]
    assert not get(http_server.url).enabled


def test_adapter_reports_the_httpcore_version():
    status = kapatch.install()
    assert status.adapter("httpx").version == httpcore.__version__


# --------------------------------------------------------------------------- max_idle
#
# A server that, like a NAT box, forgets a flow idle FORGET_AFTER s: a request sent on it
# then gets no answer and no FIN/RST. httpx's default keepalive_expiry (5 s) is longer, so
# without kapatch the pooled connection is reused into the hang; max_idle shortens it.

FORGET_AFTER = 1.0
IDLE_FOR = 1.3
READ_CAP = 2.0
CAPPED = httpx.Timeout(5.0, read=READ_CAP)


@pytest.fixture
def forgetful() -> Iterator[ForgetfulHttpServer]:
    with start_forgetful_http_server(FORGET_AFTER) as server:
        yield server


def twice_sync(url: str, **client_options: Any) -> tuple[float, str]:
    """GET, idle IDLE_FOR s, GET again; (seconds the second took, its body or its error's name)."""
    with httpx.Client(timeout=CAPPED, **client_options) as client:
        assert client.get(url).text == "ok\n"
        time.sleep(IDLE_FOR)
        started = time.monotonic()
        try:
            outcome = client.get(url).text
        except httpx.ReadTimeout as error:
            outcome = type(error).__name__
        return time.monotonic() - started, outcome


def twice_async(url: str, **client_options: Any) -> tuple[float, str]:
    async def main() -> tuple[float, str]:
        async with httpx.AsyncClient(timeout=CAPPED, **client_options) as client:
            assert (await client.get(url)).text == "ok\n"
            await asyncio.sleep(IDLE_FOR)
            started = time.monotonic()
            try:
                outcome = (await client.get(url)).text
            except httpx.ReadTimeout as error:
                outcome = type(error).__name__
            return time.monotonic() - started, outcome

    return asyncio.run(main())


def evicted() -> int:
    return kapatch.status().adapter("httpx").pool["evicted"]


TWICE = pytest.mark.parametrize("twice", [twice_sync, twice_async], ids=["sync", "asyncio"])


@TWICE
def test_without_kapatch_the_forgotten_connection_hangs_until_the_read_timeout(forgetful, twice):
    took, outcome = twice(forgetful.url + "/")
    assert outcome == "ReadTimeout" and took >= READ_CAP * 0.9
    assert forgetful.connections == 1


@TWICE
def test_max_idle_expires_the_idle_connection_and_httpx_opens_a_new_one(install, forgetful, twice):
    install(max_idle="300ms")
    took, outcome = twice(forgetful.url + "/")
    assert outcome == "ok\n" and took < READ_CAP / 2
    assert forgetful.connections == 2
    assert evicted() == 1
    assert kapatch.status().adapter("httpx").counts["configured"] == 2


@TWICE
def test_a_longer_max_idle_never_lengthens_httpx_expiry(install, forgetful, twice):
    """max_idle 1 h over httpx's 5 s: the connection still expires at 5 s (here: is reused before)."""
    install(max_idle="1h")
    with httpx.Client() as client:
        pool = client._transport._pool  # type: ignore[attr-defined]
        client.get(forgetful.url + "/")
        assert [c._connection._keepalive_expiry for c in pool.connections] == [5.0]
    took, outcome = twice(forgetful.url + "/")
    assert outcome == "ReadTimeout" and took >= READ_CAP * 0.9  # idle 1.3 s < 5 s: reused, as without kapatch
    assert evicted() == 0


@TWICE
def test_respect_mode_keeps_an_explicit_keepalive_expiry(install, forgetful, twice):
    install(max_idle="300ms")
    took, outcome = twice(forgetful.url + "/", limits=httpx.Limits(keepalive_expiry=60))
    assert outcome == "ReadTimeout" and took >= READ_CAP * 0.9 and forgetful.connections == 1


@TWICE
def test_override_mode_lowers_an_explicit_keepalive_expiry(install, forgetful, twice):
    install(max_idle="300ms", mode="override")
    took, outcome = twice(forgetful.url + "/", limits=httpx.Limits(keepalive_expiry=60))
    assert outcome == "ok\n" and took < READ_CAP / 2
    assert forgetful.connections == 2 and evicted() == 1


def test_bare_httpcore_pool_never_expiring_by_default_gets_max_idle(install, forgetful):
    install(max_idle="300ms")
    with httpcore.ConnectionPool() as pool:
        assert pool.request("GET", forgetful.url + "/").content == b"ok\n"
        time.sleep(IDLE_FOR)
        assert pool.request("GET", forgetful.url + "/").content == b"ok\n"
    assert forgetful.connections == 2 and evicted() == 1


def test_pool_hooks_only_with_a_max_idle_and_restored_exactly():
    from httpcore._async.connection_pool import AsyncConnectionPool
    from httpcore._sync.connection_pool import ConnectionPool
    from httpcore._sync.http11 import HTTP11Connection

    def current() -> tuple[object, ...]:
        return (
            vars(ConnectionPool)["create_connection"],
            vars(ConnectionPool)["__init__"],
            vars(AsyncConnectionPool)["create_connection"],
            vars(HTTP11Connection)["close"],
        )

    originals = current()
    kapatch.install(environ={})
    assert current() == originals
    kapatch.uninstall()
    kapatch.install(environ={}, max_idle="1h")
    assert all(now is not before for now, before in zip(current(), originals, strict=True))
    kapatch.uninstall()
    assert all(now is before for now, before in zip(current(), originals, strict=True))


def test_status_says_max_idle_is_carried_and_heartbeat_is_not(install):
    install(max_idle="30s", heartbeat="10s")
    support = kapatch.status().adapter("httpx").pool_support
    assert "max_idle: httpcore keepalive_expiry" in support and "heartbeat: NOT carried" in support
