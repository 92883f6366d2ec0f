"""botocore (and so boto3) with ``Config(tcp_keepalive=True)``, against the local HTTP test server.

botocore has no adapter of its own: it connects through urllib3 (the urllib3 adapter),
adding ``(SOL_SOCKET, SO_KEEPALIVE, 1)`` to urllib3's ``socket_options`` when
``tcp_keepalive`` is on. Field by field, that chooses ``enabled`` only: the timings and
the user timeout, which nobody chose, get the policy (before the field rule, the
kernel's 2 h timings stayed). A real S3 client (dummy credentials, path-style
addressing) sends ``HeadBucket`` to the server; the options are read back from the
socket pooled in botocore's own urllib3 pool.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError
from servers import start_forgetful_http_server

import kapatch
from kapatch import KeepaliveState, Policy
from kapatch.profiles import PROFILES

BALANCED = PROFILES["balanced"].policy
FAST = PROFILES["fast-failover"].policy


def expected(policy: Policy) -> KeepaliveState:
    return KeepaliveState(True, policy.idle, policy.interval, policy.count, policy.user_timeout_ms or 0)


def _os_timings() -> tuple[int, int, int]:
    names = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
    return tuple(int(Path("/proc/sys/net/ipv4", name).read_text()) for name in names)  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _no_aws_files(monkeypatch, tmp_path):
    # No developer's ~/.aws config or credentials, no instance-metadata lookups.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def s3_socket_state(http_server, **config) -> KeepaliveState:
    client = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=http_server.url,
        aws_access_key_id="kapatch",
        aws_secret_access_key="kapatch",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config),
    )
    try:
        client.head_bucket(Bucket="ok")  # HEAD /ok: 200 from the test server
        manager = client._endpoint.http_session._manager
        pool = manager.connection_from_url(http_server.url)
        socks = [c.sock for c in list(pool.pool.queue) if c is not None and c.sock is not None]
        assert len(socks) == 1, f"expected one pooled connection, found {len(socks)}"
        options = pool.conn_kw.get("socket_options") or []
        if config.get("tcp_keepalive"):
            assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options  # botocore's own addition
        return kapatch.inspect(socks[0])
    finally:
        client.close()


def test_without_kapatch_tcp_keepalive_has_the_kernels_timings(http_server):
    kapatch.uninstall()
    idle, interval, count = _os_timings()
    assert s3_socket_state(http_server, tcp_keepalive=True) == KeepaliveState(True, idle, interval, count, 0)


def test_tcp_keepalive_gets_the_policys_timings(install, http_server):
    install()
    assert s3_socket_state(http_server, tcp_keepalive=True) == expected(BALANCED)
    entry = kapatch.status().adapter("urllib3")
    assert entry.counts["configured"] == 1
    assert dict(entry.kept) == {"enabled": 1}  # the one field botocore's user chose


def test_without_tcp_keepalive_the_policy_applies(install, http_server):
    install(profile="fast-failover")
    assert s3_socket_state(http_server) == expected(FAST)


def test_per_adapter_override_reaches_botocore(install, http_server):
    install(environ={"KAPATCH_PROFILE": "fast-failover", "KAPATCH_URLLIB3_IDLE": "21s"})
    assert s3_socket_state(http_server, tcp_keepalive=True) == expected(FAST.evolve(idle="21s"))


# max_idle reaches botocore's own urllib3 pools (AWSHTTPConnectionPool inherits the hand-out).
FORGET_AFTER, IDLE_FOR, READ_CAP = 1.0, 1.3, 2.0


def head_twice(url: str) -> str:
    """HeadBucket, idle IDLE_FOR s, HeadBucket again: "ok" or the second call's error's name."""
    client = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="kapatch",
        aws_secret_access_key="kapatch",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=READ_CAP,
        ),
    )
    try:
        client.head_bucket(Bucket="ok")
        time.sleep(IDLE_FOR)
        try:
            client.head_bucket(Bucket="ok")
        except ReadTimeoutError as error:
            return type(error).__name__
        return "ok"
    finally:
        client.close()


def test_without_kapatch_a_forgotten_pooled_connection_times_out():
    with start_forgetful_http_server(FORGET_AFTER) as server:
        assert head_twice(server.url) == "ReadTimeoutError"
        assert server.connections == 1


def test_max_idle_gives_botocore_a_new_connection(install):
    install(max_idle="300ms")
    with start_forgetful_http_server(FORGET_AFTER) as server:
        assert head_twice(server.url) == "ok"
        assert server.connections == 2
    assert kapatch.status().adapter("urllib3").pool["evicted"] == 1
