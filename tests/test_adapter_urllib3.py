"""The urllib3 adapter (and so requests) against real servers on loopback.

Every assertion reads the options back from the live connection's own socket
(``conn.sock`` of the pooled ``HTTPConnection``) with getsockopt (``kapatch.inspect``).
urllib3 and requests are imported here at module level, i.e. before ``install()``;
the imported-after case runs in a fresh interpreter. Runs on urllib3 2.x and 1.26.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
import urllib3
from servers import ForgetfulHttpServer, _connect_unobserved, _ProxyHandler, start_forgetful_http_server
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

import kapatch
from kapatch import Rule
from kapatch.adapters.urllib3 import Urllib3Adapter, chosen_fields
from kapatch.profiles import PROFILES

FAST = PROFILES["fast-failover"].policy  # idle 10, interval 5, count 3, user timeout 25 s
TIMEOUT = urllib3.Timeout(connect=5, read=10)

# A user's own keepalive choice, as requests-toolbelt's TCPKeepAliveAdapter would pass it.
USER_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 4),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2),
]

Install = Callable[..., kapatch.Status]

# Taken at import, before any test installs kapatch.
ORIGINAL_NEW_CONN = vars(HTTPConnection)["_new_conn"]


def pooled_socket(pool: HTTPConnectionPool) -> socket.socket:
    """The one live socket idle in *pool* (the connection the last request used)."""
    socks = [conn.sock for conn in list(pool.pool.queue) if conn is not None and conn.sock is not None]
    assert len(socks) == 1, f"expected one pooled connection, found {len(socks)}"
    return socks[0]


def request_pool(response: requests.Response) -> HTTPConnectionPool:
    """The pool a requests response's connection went back to (its key holds TLS kwargs)."""
    pool = response.raw._pool
    assert isinstance(pool, HTTPConnectionPool)
    return pool


def counts(adapter: str = "urllib3") -> dict[str, int]:
    return dict(kapatch.status().adapter(adapter).counts)


def get(manager: urllib3.PoolManager, url: str) -> urllib3.BaseHTTPResponse:
    response = manager.request("GET", url, timeout=TIMEOUT, retries=False)
    assert response.status == 200
    assert response.data == b"ok\n"
    return response


# --------------------------------------------------------------------------- urllib3 direct


def test_imported_before_install_is_patched_at_once(install):
    status = install(profile="fast-failover")
    assert status.adapter("urllib3").enabled
    assert status.adapter("urllib3").reason == "patched"
    assert vars(HTTPConnection)["_new_conn"] is not ORIGINAL_NEW_CONN


def test_pool_manager_connection_carries_the_policy(install, http_server):
    install(profile="fast-failover")
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert state.mismatches(FAST) == ()
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout_ms) == (
        True,
        10,
        5,
        3,
        25_000,
    )
    # The urllib3 adapter decided, not the raw-socket fallback: one decision per socket.
    assert counts() == {"configured": 1, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}
    assert counts("socket")["configured"] == 0


def test_pooled_reuse_keeps_one_socket_decided_once(install, http_server):
    install(profile="fast-failover")
    manager = urllib3.PoolManager()
    pool = manager.connection_from_url(http_server.url)
    get(manager, http_server.url + "/ok")
    first = pooled_socket(pool)
    for _ in range(3):
        get(manager, http_server.url + "/ok")
    assert pooled_socket(pool) is first
    assert pool.num_connections == 1
    assert kapatch.inspect(first).mismatches(FAST) == ()
    assert counts()["configured"] == 1


def test_connection_pool_used_directly(install, http_server):
    install(idle="12s", interval="3s", count=4)
    with HTTPConnectionPool(http_server.host, http_server.port, maxsize=1) as pool:
        assert pool.request("GET", "/ok", timeout=TIMEOUT).status == 200
        state = kapatch.inspect(pooled_socket(pool))
    assert (state.idle, state.interval, state.count, state.user_timeout_ms) == (12, 3, 4, 24_000)


def test_https_connection_carries_the_policy(install, https_server):
    install(profile="fast-failover")
    manager = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(https_server.ca_file))
    get(manager, https_server.url + "/ok")
    sock = pooled_socket(manager.connection_from_url(https_server.url))
    assert hasattr(sock, "cipher")  # really the TLS socket urllib3 reads from
    assert kapatch.inspect(sock).mismatches(FAST) == ()
    assert counts()["configured"] == 1


def test_ipv6_connection_carries_the_policy(install, http_server_v6):
    install(profile="aws")
    manager = urllib3.PoolManager()
    get(manager, http_server_v6.url + "/ok")
    sock = pooled_socket(manager.connection_from_url(http_server_v6.url))
    assert sock.family == socket.AF_INET6
    assert kapatch.inspect(sock).mismatches(PROFILES["aws"].policy) == ()


# --------------------------------------------------------------------------- proxies


def test_http_proxy_connection_carries_the_policy(install, http_server, http_proxy):
    install(profile="fast-failover")
    # Proxied pools pass socket_options=[]: the policy must reach them regardless.
    manager = urllib3.ProxyManager(http_proxy.url)
    get(manager, http_server.url + "/ok")
    assert ("GET", http_server.url + "/ok") in http_proxy.log.entries
    sock = pooled_socket(manager.connection_from_url(http_server.url))
    assert sock.getpeername()[1] == http_proxy.port  # the socket goes to the proxy
    assert kapatch.inspect(sock).mismatches(FAST) == ()
    assert counts()["configured"] == 1


def test_https_through_proxy_connect_tunnel_carries_the_policy(install, https_server, http_proxy):
    install(profile="fast-failover")
    manager = urllib3.ProxyManager(
        http_proxy.url, cert_reqs="CERT_REQUIRED", ca_certs=str(https_server.ca_file)
    )
    get(manager, https_server.url + "/ok")
    assert ("CONNECT", f"{https_server.host}:{https_server.port}") in http_proxy.log.entries
    sock = pooled_socket(manager.connection_from_url(https_server.url))
    assert sock.getpeername()[1] == http_proxy.port
    assert kapatch.inspect(sock).mismatches(FAST) == ()
    assert counts()["configured"] == 1


# --------------------------------------------------------------------------- requests


def test_requests_session_carries_the_policy(install, http_server):
    install(profile="fast-failover")
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the machine's environment
        response = session.get(http_server.url + "/ok", timeout=10)
        assert response.status_code == 200
        assert kapatch.inspect(pooled_socket(request_pool(response))).mismatches(FAST) == ()
    assert counts()["configured"] == 1
    assert counts("socket")["configured"] == 0


def test_requests_https_session_carries_the_policy(install, https_server):
    install(profile="fast-failover")
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(https_server.url + "/ok", verify=str(https_server.ca_file), timeout=10)
        assert response.ok
        sock = pooled_socket(request_pool(response))
        assert hasattr(sock, "cipher")
        assert kapatch.inspect(sock).mismatches(FAST) == ()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_with_proxies_carries_the_policy(install, scheme, http_server, https_server, http_proxy):
    install(profile="fast-failover")
    server = http_server if scheme == "http" else https_server
    proxies = {"http": http_proxy.url, "https": http_proxy.url}
    with requests.Session() as session:
        session.trust_env = False
        verify = str(https_server.ca_file)
        response = session.get(server.url + "/ok", proxies=proxies, verify=verify, timeout=10)
        assert response.ok
        sock = pooled_socket(request_pool(response))
        # Read while the session is open: closing it closes the proxy's pools.
        assert sock.getpeername()[1] == http_proxy.port
        assert kapatch.inspect(sock).mismatches(FAST) == ()
    method = "GET" if scheme == "http" else "CONNECT"
    assert any(entry[0] == method and str(server.port) in entry[1] for entry in http_proxy.log.entries)


# --------------------------------------------------------------------------- per adapter, per destination


def test_per_adapter_override_beats_the_global_policy(install, http_server):
    install(idle="20s", overrides={"urllib3": {"idle": "7s"}})
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    assert kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url))).idle == 7
    # The same install gives a bare socket the global policy: the difference is the adapter's.
    with socket.create_connection((http_server.host, http_server.port), timeout=5) as raw:
        assert kapatch.inspect(raw).idle == 20


def test_per_adapter_override_from_the_environment(install, http_server):
    install(environ={"KAPATCH_IDLE": "20s", "KAPATCH_URLLIB3_IDLE": "7s", "KAPATCH_URLLIB3_COUNT": "2"})
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert (state.idle, state.count) == (7, 2)


def test_skip_rule_matches_the_host_name_urllib3_dials(install, http_server):
    # localhost and 127.0.0.1 are the same IP: only the host NAME tells them apart.
    install(profile="fast-failover", rules=[Rule.build("localhost", skip=True, adapters=["urllib3"])])
    manager = urllib3.PoolManager()
    by_name = f"http://localhost:{http_server.port}"
    get(manager, by_name + "/ok")
    assert not kapatch.inspect(pooled_socket(manager.connection_from_url(by_name))).enabled
    assert counts()["skipped"] == 1
    get(manager, http_server.url + "/ok")  # http://127.0.0.1:port
    assert kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url))).mismatches(FAST) == ()
    assert counts()["configured"] == 1


def test_changing_rule_matches_the_host_name(install, http_server):
    install(profile="fast-failover", rules=[Rule.build("local*", idle="9s", adapters=["urllib3"])])
    manager = urllib3.PoolManager()
    url = f"http://localhost:{http_server.port}"
    get(manager, url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(url)))
    assert (state.idle, state.interval, state.count) == (9, 5, 3)


def test_proxied_connection_is_matched_by_the_proxy_host(install, http_server, http_proxy):
    # The socket goes to the proxy (127.0.0.1), so a rule naming the target must not skip it...
    install(profile="fast-failover", rules=[Rule.build("localhost", skip=True, adapters=["urllib3"])])
    manager = urllib3.ProxyManager(http_proxy.url)
    target = f"http://localhost:{http_server.port}"
    get(manager, target + "/ok")
    assert kapatch.inspect(pooled_socket(manager.connection_from_url(target))).mismatches(FAST) == ()
    # ...and one naming the proxy does.
    install(profile="fast-failover", rules=[Rule.build("127.0.0.1", skip=True, adapters=["urllib3"])])
    manager = urllib3.ProxyManager(http_proxy.url)
    get(manager, target + "/ok")
    assert not kapatch.inspect(pooled_socket(manager.connection_from_url(target))).enabled
    assert counts()["skipped"] == 1


def test_rule_for_another_adapter_does_not_touch_urllib3(install, http_server):
    install(profile="fast-failover", rules=[Rule.build("127.0.0.1", skip=True, adapters=["socket"])])
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    assert kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url))).enabled


# --------------------------------------------------------------------------- respect / override


def test_respect_mode_keeps_the_users_socket_options(install, http_server):
    install(profile="fast-failover")  # mode respect is the default
    manager = urllib3.PoolManager(socket_options=HTTPConnection.default_socket_options + USER_KEEPALIVE)
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    # The user timeout nobody chose is auto over the application's own timings: 33 + 4 * 2 s.
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout_ms) == (
        True,
        33,
        4,
        2,
        41000,
    )
    assert counts() == {"configured": 1, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}
    assert dict(kapatch.status().adapter("urllib3").kept) == {
        "enabled": 1,
        "idle": 1,
        "interval": 1,
        "count": 1,
    }


def test_respect_mode_keeps_every_field_when_the_application_chose_them_all(install, http_server):
    install(profile="fast-failover")
    options = [*USER_KEEPALIVE, (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1234)]
    manager = urllib3.PoolManager(socket_options=options)
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout_ms) == (
        True,
        33,
        4,
        2,
        1234,
    )
    assert counts() == {"configured": 0, "respected": 1, "skipped": 0, "failed": 0, "uncovered": 0}


def test_botocore_style_keepalive_on_alone_gets_the_policy_timings(install, http_server):
    # botocore's tcp_keepalive=True adds only SO_KEEPALIVE=1: the kernel's 2 h timings were nobody's choice.
    install(profile="fast-failover")
    manager = urllib3.PoolManager(socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)])
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert state.mismatches(FAST) == ()
    assert dict(kapatch.status().adapter("urllib3").kept) == {"enabled": 1}


def test_respect_mode_keeps_keepalive_explicitly_off(install, http_server):
    install(profile="fast-failover")
    manager = urllib3.PoolManager(socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)])
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert not state.enabled
    # Off chooses the probe timings too; the user timeout is a field of its own: the policy's.
    assert state.user_timeout_ms == FAST.user_timeout_ms
    assert counts()["configured"] == 1


def test_respect_mode_keeps_timings_given_without_so_keepalive(install, http_server):
    # Only TCP_KEEPIDLE: the application chose the idle time, nothing else; field by field,
    # the policy switches keepalive on and fills the rest around the application's 33 s.
    install(profile="fast-failover")
    manager = urllib3.PoolManager(socket_options=[(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33)])
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert (state.enabled, state.idle, state.interval, state.count) == (True, 33, FAST.interval, FAST.count)
    assert state.user_timeout_ms == (33 + FAST.interval * FAST.count) * 1000
    assert counts()["configured"] == 1


def test_respect_mode_keeps_the_users_options_through_a_proxy(install, http_server, http_proxy):
    install(profile="fast-failover")
    manager = urllib3.ProxyManager(http_proxy.url, socket_options=USER_KEEPALIVE)
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert (state.idle, state.interval, state.count) == (33, 4, 2)
    assert counts()["configured"] == 1
    assert kapatch.status().adapter("urllib3").kept["idle"] == 1


def test_reassigned_default_socket_options_are_judged_by_what_reaches_the_socket(
    install, http_server, monkeypatch
):
    # urllib3 2.x binds default_socket_options as a default argument when the class is
    # created, so reassigning it does not reach the socket there; 1.26 reads it per
    # connection. Either way kapatch respects exactly what urllib3 really sets.
    monkeypatch.setattr(HTTPConnection, "default_socket_options", USER_KEEPALIVE)
    install(profile="fast-failover")
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    if urllib3.__version__.startswith("1."):
        assert (state.idle, state.interval, state.count) == (33, 4, 2)
        assert counts()["configured"] == 1  # the user timeout nobody chose got the policy
        assert kapatch.status().adapter("urllib3").kept["idle"] == 1
    else:
        assert state.mismatches(FAST) == ()
        assert counts()["configured"] == 1


def test_default_socket_options_extended_in_place_are_respected(install, http_server):
    # Mutating the bound list itself reaches every connection in both versions.
    defaults = HTTPConnection.default_socket_options
    saved = list(defaults)
    defaults.extend(USER_KEEPALIVE)
    try:
        install(profile="fast-failover")
        manager = urllib3.PoolManager()
        get(manager, http_server.url + "/ok")
        state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    finally:
        defaults[:] = saved
    assert (state.idle, state.interval, state.count) == (33, 4, 2)
    assert kapatch.status().adapter("urllib3").kept["idle"] == 1


def test_port_rule_matches_the_port_urllib3_dials(install, http_server):
    install(
        profile="fast-failover", rules=[Rule.build(f"*:{http_server.port}", idle="8s", adapters=["urllib3"])]
    )
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    assert kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url))).idle == 8


def test_other_socket_options_are_not_an_explicit_keepalive(install, http_server):
    install(profile="fast-failover")
    manager = urllib3.PoolManager(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    get(manager, http_server.url + "/ok")
    sock = pooled_socket(manager.connection_from_url(http_server.url))
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # the user's option stays
    assert kapatch.inspect(sock).mismatches(FAST) == ()
    assert counts()["configured"] == 1


@pytest.mark.parametrize("how", ["argument", "per-adapter"])
def test_override_mode_replaces_the_users_socket_options(install, http_server, how):
    if how == "argument":
        install(profile="fast-failover", mode="override")
    else:
        install(profile="fast-failover", overrides={"urllib3": {"mode": "override"}})
    manager = urllib3.PoolManager(socket_options=USER_KEEPALIVE)
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert state.mismatches(FAST) == ()
    assert counts() == {"configured": 1, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}


def test_disabled_urllib3_adapter_leaves_its_sockets_to_the_socket_adapter(install, http_server):
    status = install(profile="fast-failover", disabled_adapters=["urllib3"])
    assert not status.adapter("urllib3").enabled
    assert vars(HTTPConnection)["_new_conn"] is ORIGINAL_NEW_CONN
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    assert kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url))).mismatches(FAST) == ()
    assert counts("socket")["configured"] == 1


# --------------------------------------------------------------------------- uninstall, status


def test_uninstall_restores_the_original_method_and_defaults(install, http_server):
    install(profile="fast-failover")
    assert vars(HTTPConnection)["_new_conn"] is not ORIGINAL_NEW_CONN
    kapatch.uninstall()
    assert vars(HTTPConnection)["_new_conn"] is ORIGINAL_NEW_CONN
    assert HTTPConnection._new_conn is ORIGINAL_NEW_CONN
    manager = urllib3.PoolManager()
    get(manager, http_server.url + "/ok")
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(http_server.url)))
    assert not state.enabled
    assert state.user_timeout_ms == 0


def test_status_counts_configured_respected_skipped(install, http_server):
    install(profile="fast-failover", rules=[Rule.build("localhost", skip=True, adapters=["urllib3"])])
    plain = urllib3.PoolManager()
    own = urllib3.PoolManager(socket_options=USER_KEEPALIVE)
    get(plain, http_server.url + "/ok")
    get(plain, http_server.url + "/ok")  # reused: not decided again
    get(own, http_server.url + "/ok")
    get(plain, f"http://localhost:{http_server.port}/ok")
    assert counts() == {"configured": 2, "respected": 0, "skipped": 1, "failed": 0, "uncovered": 0}
    assert "configured=2 respected=0 skipped=1" in kapatch.status().render()
    assert "kept as the application chose them: count x1, enabled x1, idle x1, interval x1" in (
        kapatch.status().render()
    )


def test_supported_versions():
    assert Urllib3Adapter.unavailable_reason() is None
    assert Urllib3Adapter.supported_range() == ">=1.26, <3"
    assert Urllib3Adapter.installed_version() == urllib3.__version__


def test_chosen_fields_reads_socket_options():
    assert chosen_fields(None) is None
    assert chosen_fields([]) is None
    assert chosen_fields([(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) is None
    # Keepalive off chooses the probe timings too; the user timeout stays its own field.
    assert chosen_fields(((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0),)) == {
        "enabled",
        "idle",
        "interval",
        "count",
    }
    assert chosen_fields([(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]) == {"enabled"}
    assert chosen_fields([(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000)]) == {"user_timeout"}
    assert chosen_fields([("junk",), None, (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)]) == {"count"}


# --------------------------------------------------------------------------- imported after install()

_AFTER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import kapatch
    assert "urllib3" not in sys.modules, "kapatch must not import urllib3"
    status = kapatch.install(environ={}, profile="fast-failover", overrides={"urllib3": {"idle": "7s"}})
    waiting = status.adapter("urllib3").reason
    import {library}
    import urllib3
    patched = kapatch.status().adapter("urllib3").reason
    if "{library}" == "requests":
        session = requests.Session()
        session.trust_env = False
        response = session.get(sys.argv[1] + "/ok", timeout=10)
        assert response.ok
        pool = response.raw._pool
    else:
        manager = urllib3.PoolManager()
        assert manager.request("GET", sys.argv[1] + "/ok", retries=False).status == 200
        pool = manager.connection_from_url(sys.argv[1])
    [sock] = [c.sock for c in list(pool.pool.queue) if c is not None and c.sock is not None]
    state = kapatch.inspect(sock)
    counts = dict(kapatch.status().adapter("urllib3").counts)
    kapatch.uninstall()
    print(json.dumps(dict(waiting=waiting, patched=patched, idle=state.idle,
                          interval=state.interval, count=state.count, counts=counts)))
    """
)


@pytest.mark.parametrize("library", ["urllib3", "requests"])
def test_library_imported_after_install(http_server, library):
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAPATCH")}
    result = subprocess.run(
        [sys.executable, "-c", _AFTER_SCRIPT.replace("{library}", library), http_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["waiting"].startswith("waiting for import of urllib3.connection")
    assert found["patched"] == "patched"
    assert (found["idle"], found["interval"], found["count"]) == (7, 5, 3)
    assert found["counts"]["configured"] == 1


# --------------------------------------------------------------------------- SOCKS (PySocks)


class _Socks5Handler(socketserver.StreamRequestHandler):
    """Just enough SOCKS5 for urllib3's SOCKSProxyManager: no auth, CONNECT, loopback only."""

    server: _Socks5Server

    def handle(self) -> None:
        self.connection.settimeout(10)
        _version, methods = self.rfile.read(2)
        self.rfile.read(methods)
        self.wfile.write(b"\x05\x00")  # no authentication
        _version, command, _reserved, kind = self.rfile.read(4)
        if kind == 1:
            host = socket.inet_ntoa(self.rfile.read(4))
        elif kind == 3:
            host = self.rfile.read(self.rfile.read(1)[0]).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, self.rfile.read(16))
        (port,) = struct.unpack("!H", self.rfile.read(2))
        if command != 1 or host not in ("127.0.0.1", "localhost", "::1"):
            self.wfile.write(b"\x05\x02\x00\x01" + bytes(6))  # not allowed
            return
        self.server.targets.append((host, port))
        # The proxy's own upstream leg must not be seen (or counted) by kapatch's hook.
        upstream = _connect_unobserved(host, port, 10)
        self.wfile.write(b"\x05\x00\x00\x01" + bytes(6))
        self.server.open.add(upstream)
        try:
            _ProxyHandler._relay(self.connection, upstream)
        finally:
            self.server.open.discard(upstream)
            upstream.close()


class _Socks5Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Socks5Handler)
        self.targets: list[tuple[str, int]] = []
        self.open: set[socket.socket] = set()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self.open.add(request)
        super().process_request(request, client_address)


@pytest.fixture(scope="module")
def socks_proxy() -> Iterator[_Socks5Server]:
    pytest.importorskip("socks", reason="PySocks is not installed (urllib3[socks])")
    server = _Socks5Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        for sock in list(server.open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(timeout=10)


def test_socks_proxy_connection_carries_the_urllib3_policy(install, http_server, socks_proxy):
    from urllib3.contrib.socks import SOCKSProxyManager

    install(profile="fast-failover", overrides={"urllib3": {"idle": "7s"}})
    assert kapatch.status().adapter("urllib3").reason == "patched"
    manager = SOCKSProxyManager(f"socks5h://127.0.0.1:{socks_proxy.port}")
    get(manager, http_server.url + "/ok")
    assert ("127.0.0.1", http_server.port) in socks_proxy.targets
    sock = pooled_socket(manager.connection_from_url(http_server.url))
    assert socket.socket.getpeername(sock)[1] == socks_proxy.port  # PySocks reports the target
    state = kapatch.inspect(sock)
    assert (state.enabled, state.idle, state.interval, state.count) == (True, 7, 5, 3)
    assert counts()["configured"] == 1
    assert counts("socket")["configured"] == 0  # claimed by urllib3, not the raw-socket fallback


def test_socks_proxy_is_the_destination_rules_see(install, http_server, socks_proxy):
    from urllib3.contrib.socks import SOCKSProxyManager

    rules = [Rule.build(f"*:{socks_proxy.port}", skip=True, adapters=["urllib3"])]
    install(profile="fast-failover", rules=rules)
    manager = SOCKSProxyManager(f"socks5h://localhost:{socks_proxy.port}", socket_options=[])
    get(manager, f"http://localhost:{http_server.port}/ok")
    pool = manager.connection_from_url(f"http://localhost:{http_server.port}")
    assert not kapatch.inspect(pooled_socket(pool)).enabled
    assert counts()["skipped"] == 1


def test_requests_with_a_socks_proxy_carries_the_policy(install, http_server, socks_proxy):
    install(profile="fast-failover")
    proxies = {"http": f"socks5://127.0.0.1:{socks_proxy.port}"}
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(http_server.url + "/ok", proxies=proxies, timeout=10)
        assert response.ok
        sock = pooled_socket(request_pool(response))
        assert socket.socket.getpeername(sock)[1] == socks_proxy.port  # PySocks reports the target
        assert kapatch.inspect(sock).mismatches(FAST) == ()
    assert counts()["configured"] == 1


# --------------------------------------------------------------------------- max_idle
#
# A server that, like a NAT box, forgets a flow idle FORGET_AFTER s: a request sent on it
# then gets no answer and no FIN/RST. With max_idle under that, the pool never reuses it.

FORGET_AFTER = 1.0
IDLE_FOR = 1.3  # the client's pause: past FORGET_AFTER (and past max_idle)
READ_CAP = 2.0  # the read timeout: the cap on the hang without kapatch
CAPPED = urllib3.Timeout(connect=5, read=READ_CAP)


@pytest.fixture
def forgetful() -> Iterator[ForgetfulHttpServer]:
    with start_forgetful_http_server(FORGET_AFTER) as server:
        yield server


def pool_counts() -> dict[str, int]:
    return dict(kapatch.status().adapter("urllib3").pool)


def test_without_kapatch_the_forgotten_connection_hangs_until_the_read_timeout(forgetful):
    manager = urllib3.PoolManager()
    assert manager.request("GET", forgetful.url + "/", timeout=CAPPED, retries=False).status == 200
    time.sleep(IDLE_FOR)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        manager.request("GET", forgetful.url + "/", timeout=CAPPED, retries=False)
    assert time.monotonic() - started >= READ_CAP * 0.9
    assert forgetful.connections == 1  # the pooled connection was reused, into the hang


def test_max_idle_closes_the_idle_connection_and_urllib3_opens_a_new_one(install, forgetful):
    install(max_idle="300ms")
    manager = urllib3.PoolManager()
    assert manager.request("GET", forgetful.url + "/", timeout=CAPPED, retries=False).status == 200
    time.sleep(IDLE_FOR)
    started = time.monotonic()
    response = manager.request("GET", forgetful.url + "/", timeout=CAPPED, retries=False)
    assert response.status == 200 and response.data == b"ok\n"
    assert time.monotonic() - started < READ_CAP / 2
    assert forgetful.connections == 2
    assert pool_counts()["evicted"] == 1
    state = kapatch.inspect(pooled_socket(manager.connection_from_url(forgetful.url)))
    assert state.enabled  # the new connection went through the connect hook as usual
    assert counts()["configured"] == 2


def test_requests_session_gets_a_new_connection_after_max_idle(install, forgetful):
    install(max_idle="300ms")
    with requests.Session() as session:
        assert session.get(forgetful.url + "/", timeout=(5, READ_CAP)).text == "ok\n"
        time.sleep(IDLE_FOR)
        assert session.get(forgetful.url + "/", timeout=(5, READ_CAP)).text == "ok\n"
    assert forgetful.connections == 2
    assert pool_counts()["evicted"] == 1


def test_without_kapatch_requests_hangs_too(forgetful):
    with requests.Session() as session:
        assert session.get(forgetful.url + "/", timeout=(5, READ_CAP)).status_code == 200
        time.sleep(IDLE_FOR)
        with pytest.raises(requests.exceptions.ReadTimeout):
            session.get(forgetful.url + "/", timeout=(5, READ_CAP))
    assert forgetful.connections == 1


def test_a_connection_idle_less_than_max_idle_is_reused(install, forgetful):
    install(max_idle="5s")
    manager = urllib3.PoolManager()
    for _ in range(3):
        assert manager.request("GET", forgetful.url + "/", timeout=CAPPED, retries=False).status == 200
        time.sleep(0.1)
    assert forgetful.connections == 1
    assert pool_counts()["evicted"] == 0


def test_max_idle_from_a_rule_for_one_destination_only(install, forgetful, http_server):
    install(rules=[Rule.build(f"127.0.0.1:{forgetful.port}", max_idle="300ms")])
    manager = urllib3.PoolManager()
    for url in (forgetful.url + "/", http_server.url + "/ok"):
        assert manager.request("GET", url, timeout=CAPPED, retries=False).status == 200
    time.sleep(IDLE_FOR)
    for url in (forgetful.url + "/", http_server.url + "/ok"):
        assert manager.request("GET", url, timeout=CAPPED, retries=False).status == 200
    assert forgetful.connections == 2
    assert pool_counts()["evicted"] == 1  # the other destination's connection was reused


def test_pool_hooks_go_on_only_with_a_max_idle_and_come_off_exactly():
    import urllib3.connectionpool as pool_module

    originals = (vars(HTTPConnectionPool)["_put_conn"], vars(pool_module)["is_connection_dropped"])
    kapatch.install(environ={})
    assert (vars(HTTPConnectionPool)["_put_conn"], pool_module.is_connection_dropped) == originals
    kapatch.uninstall()
    kapatch.install(environ={}, max_idle="1h")
    assert vars(HTTPConnectionPool)["_put_conn"] is not originals[0]
    assert pool_module.is_connection_dropped is not originals[1]
    kapatch.uninstall()
    assert (vars(HTTPConnectionPool)["_put_conn"], vars(pool_module)["is_connection_dropped"]) == originals


def test_doctor_and_status_say_max_idle_is_carried_and_heartbeat_is_not(install):
    install(max_idle="30s", heartbeat="10s")
    support = kapatch.status().adapter("urllib3").pool_support
    assert "max_idle: closed at hand-out" in support
    assert "heartbeat: NOT carried" in support


def test_a_connection_kapatch_cannot_mark_still_goes_back_and_comes_out(install):
    install(max_idle="1s")

    class Odd:
        """A connection object that refuses kapatch's attribute: the pool works as without kapatch."""

        sock = None
        is_connected = True  # urllib3 2.x's dropped test; 1.26 reads sock
        auto_open = 1

        def __setattr__(self, name: str, value: object) -> None:
            raise RuntimeError("read-only")

        def __getattr__(self, name: str) -> object:
            raise RuntimeError(f"no {name}")

        def close(self) -> None:
            pass

    odd = Odd()
    pool = HTTPConnectionPool("127.0.0.1", 9, maxsize=1)
    pool.pool.get()  # make room: the pool starts full of None
    pool._put_conn(odd)  # type: ignore[arg-type]
    assert pool._get_conn() is odd
    assert counts()["failed"] >= 1  # said and counted, never raised
