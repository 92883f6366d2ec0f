"""Shared pytest fixtures. Keep this file to fixtures only; helpers live in tests/servers.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import (
    HttpProxy,
    HttpServer,
    HttpsServer,
    MariadbServer,
    PostgresServer,
    RabbitServer,
    RedisServer,
    ipv6_loopback_available,
    start_http_proxy,
    start_http_server,
    start_https_server,
    start_mariadb,
    start_postgres,
    start_rabbitmq,
    start_redis,
)

import kapatch

# --- private real servers on loopback (session-scoped, stopped by their own pid) ---


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Private redis-server: .host, .port, .pid, .url, .ipv6 (also on ::1 when True)."""
    with start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Private PostgreSQL, trust auth: .host, .port, .pid, .dsn, .url, .user, .dbname."""
    with start_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitServer]:
    """Private RabbitMQ node (guest/guest, no plugins): .host, .port, .pid, .url."""
    with start_rabbitmq() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariadbServer]:
    """Private MariaDB, root without a password over TCP: .host, .port, .pid, .kwargs, .url, .socket_path."""
    with start_mariadb() as server:
        yield server


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpServer]:
    """HTTP/1.1 server on 127.0.0.1: GET {url}/ok, GET {url}/slow?seconds=N."""
    with start_http_server() as server:
        yield server


@pytest.fixture(scope="session")
def http_server_v6() -> Iterator[HttpServer]:
    """Same as http_server, on ::1 (skips when IPv6 loopback is unavailable)."""
    if not ipv6_loopback_available():
        pytest.skip("IPv6 loopback (::1) is not available")
    with start_http_server("::1") as server:
        yield server


@pytest.fixture(scope="session")
def https_server() -> Iterator[HttpsServer]:
    """Same as http_server behind TLS (self-signed): .url (https://), .ca_file to trust."""
    with start_https_server() as server:
        yield server


@pytest.fixture(scope="session")
def http_proxy() -> Iterator[HttpProxy]:
    """HTTP forward proxy on 127.0.0.1 (absolute-URI and CONNECT): .url, .log.entries."""
    with start_http_proxy() as proxy:
        yield proxy


# --- isolation: no test sees the developer's KAPATCH_* settings or another test's install ---


def pytest_configure(config: pytest.Config) -> None:
    for name in [n for n in os.environ if n.startswith("KAPATCH_")]:
        del os.environ[name]
    kapatch.uninstall()  # in case the .pth activated kapatch in this very process


@pytest.fixture
def install() -> Iterator[Callable[..., kapatch.Status]]:
    """``kapatch.install`` isolated from the process environment; always uninstalled after."""

    def do(**settings: Any) -> kapatch.Status:
        settings.setdefault("environ", {})
        return kapatch.install(**settings)

    try:
        yield do
    finally:
        kapatch.uninstall()


@pytest.fixture(autouse=True)
def _uninstall_after_each_test() -> Iterator[None]:
    yield
    kapatch.uninstall()
