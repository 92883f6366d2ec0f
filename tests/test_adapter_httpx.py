"""httpx/httpcore adapter on a real HTTP server; options read back from the live connection."""

from __future__ import annotations

import asyncio
import socket

import httpcore
import httpx
import pytest

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
