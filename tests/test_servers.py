"""The private test servers are real, answer on loopback, and are not the system services."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psycopg
import pytest
import redis
import urllib3
from servers import SYSTEM_PORTS, HttpProxy, HttpServer, HttpsServer, PostgresServer, RedisServer


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_ports_are_private(redis_server, postgres_server, http_server, http_proxy):
    ports = {s.port for s in (redis_server, postgres_server, http_server, http_proxy)}
    assert len(ports) == 4
    assert not ports & SYSTEM_PORTS


def test_redis_ping(redis_server: RedisServer):
    client = redis.Redis(host=redis_server.host, port=redis_server.port, socket_timeout=5)
    try:
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert int(client.info("server")["process_id"]) == redis_server.pid
    finally:
        client.close()
    assert _comm(redis_server.pid) == "redis-server"


def test_redis_ipv6(redis_server: RedisServer):
    if not redis_server.ipv6:
        pytest.skip("IPv6 loopback not available")
    client = redis.Redis(host="::1", port=redis_server.port, socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_postgres_select_1(postgres_server: PostgresServer):
    with psycopg.connect(postgres_server.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW port").fetchone() == (str(postgres_server.port),)
        assert conn.info.host == postgres_server.host
    with psycopg.connect(postgres_server.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert _comm(postgres_server.pid) == "postgres"


def test_postgres_ipv6(postgres_server: PostgresServer):
    if not postgres_server.ipv6:
        pytest.skip("IPv6 loopback not available")
    with psycopg.connect(host="::1", port=postgres_server.port, user="postgres", dbname="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_http_ok_keeps_connection_alive(http_server: HttpServer):
    with urllib3.PoolManager() as pool:
        for _ in range(3):
            response = pool.request("GET", f"{http_server.url}/ok", timeout=5)
            assert response.status == 200
            assert response.data == b"ok\n"
        conn_pool = pool.connection_from_url(http_server.url)
        assert conn_pool.num_connections == 1  # one keep-alive connection, reused


def test_http_slow_waits(http_server: HttpServer):
    started = time.monotonic()
    response = urllib3.PoolManager().request("GET", f"{http_server.url}/slow?seconds=0.3", timeout=5)
    assert response.status == 200
    assert time.monotonic() - started >= 0.3


def test_http_server_v6(http_server_v6: HttpServer):
    assert http_server_v6.url.startswith("http://[::1]:")
    response = urllib3.PoolManager().request("GET", f"{http_server_v6.url}/ok", timeout=5)
    assert response.status == 200
    assert response.data == b"ok\n"


def test_https_ok(https_server: HttpsServer):
    with urllib3.PoolManager(ca_certs=str(https_server.ca_file)) as pool:
        response = pool.request("GET", f"{https_server.url}/ok", timeout=5)
    assert response.status == 200
    assert response.data == b"ok\n"


def test_proxy_forwards_absolute_uri(http_proxy: HttpProxy, http_server: HttpServer):
    target = f"{http_server.url}/ok"
    with urllib3.ProxyManager(http_proxy.url) as pm:
        response = pm.request("GET", target, timeout=5)
    assert response.status == 200
    assert response.data == b"ok\n"
    assert ("GET", target) in http_proxy.log.entries


def test_proxy_connect_tunnel(http_proxy: HttpProxy, http_server: HttpServer):
    conn = urllib3.connection.HTTPConnection(http_proxy.host, http_proxy.port, timeout=5)
    conn.set_tunnel(http_server.host, http_server.port)
    try:
        conn.request("GET", "/ok")
        response = conn.getresponse()
        assert response.status == 200
        # urllib3 2 preloads the body (.data); 1.26 returns http.client's response (.read()).
        body = response.data if hasattr(response, "data") else response.read()
        assert body == b"ok\n"
    finally:
        conn.close()
    assert ("CONNECT", f"{http_server.host}:{http_server.port}") in http_proxy.log.entries


def test_proxy_refuses_non_loopback(http_proxy: HttpProxy):
    with urllib3.ProxyManager(http_proxy.url) as pm:
        response = pm.request("GET", "http://192.0.2.1/ok", timeout=5, retries=False)
    assert response.status == 403


def test_proxy_manager_tunnels_https(http_proxy: HttpProxy, https_server: HttpsServer):
    with urllib3.ProxyManager(http_proxy.url, ca_certs=str(https_server.ca_file)) as pm:
        response = pm.request("GET", f"{https_server.url}/ok", timeout=5)
    assert response.status == 200
    assert response.data == b"ok\n"
    assert ("CONNECT", f"{https_server.host}:{https_server.port}") in http_proxy.log.entries


def test_requests_through_proxy(http_proxy: HttpProxy, http_server: HttpServer, https_server: HttpsServer):
    import requests

    proxies = {"http": http_proxy.url, "https": http_proxy.url}
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(f"{http_server.url}/ok", proxies=proxies, timeout=5).text == "ok\n"
        response = session.get(
            f"{https_server.url}/ok", proxies=proxies, verify=str(https_server.ca_file), timeout=5
        )
        assert response.text == "ok\n"


def test_proxy_upstream_is_invisible_to_connect_hooks(
    monkeypatch: pytest.MonkeyPatch, http_proxy: HttpProxy, http_server: HttpServer
):
    """The proxy's own upstream leg bypasses socket.socket.connect (where kapatch hooks)."""
    seen: list[int] = []
    original = socket.socket.connect

    def counting_connect(self: socket.socket, address) -> None:
        seen.append(address[1])
        original(self, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    with urllib3.ProxyManager(http_proxy.url) as pm:
        assert pm.request("GET", f"{http_server.url}/ok", timeout=5).status == 200
    assert seen == [http_proxy.port]


def test_the_forgetful_server_answers_then_ignores_a_connection_idle_too_long():
    from servers import start_forgetful_http_server

    with start_forgetful_http_server(0.5) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).endswith(b"\r\n\r\nok\n")
            time.sleep(0.7)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(1.0)
            with pytest.raises(TimeoutError):  # no answer, no FIN, no RST: silence
                sock.recv(1024)
        assert server.connections == 1
