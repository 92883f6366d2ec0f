"""The pytest plugin (fixtures kapatch_install, kapatch_installed, assert_keepalive) and kapatch.testing.

Users' suites are simulated with pytest's own ``pytester`` (in a subprocess, so the
inner runs cannot leak into this one); the helper is exercised on real clients
connected to the private real servers, with options read back from their sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio
import requests
import urllib3
from servers import HttpServer, PostgresServer, RedisServer

import kapatch
from kapatch.testing import assert_keepalive as assert_keepalive_helper
from kapatch.testing import keepalive_states

pytest_plugins = ["pytester"]

Install = Callable[..., kapatch.Status]


def _run_inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=source)
    env_keys = [k for k in os.environ if k.startswith("KAPATCH_")]
    for key in env_keys:  # the inner suite must not be patched by the developer's shell
        pytester._monkeypatch.delenv(key)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


# --- the fixtures, in a user's suite ---------------------------------------------------------
def test_install_fixture_is_per_test_and_uninstalls_even_on_failure(
    pytester: pytest.Pytester, redis_server: RedisServer
) -> None:
    result = _run_inner(
        pytester,
        f"""
        import socket, kapatch

        def connect():
            return socket.create_connection(({redis_server.host!r}, {redis_server.port}), timeout=5)

        def test_installs_then_fails(kapatch_install, assert_keepalive):
            status = kapatch_install(idle="7s", interval="3s", count=2)
            assert status.installed
            with connect() as sock:
                states = assert_keepalive(sock)  # the installed policy
                assert states[0].idle == 7 and states[0].user_timeout_ms == 13000
            raise RuntimeError("the test fails after installing")

        def test_next_test_runs_unpatched():
            assert not kapatch.status().installed
            assert "connect" not in vars(socket.socket)
            with connect() as sock:
                assert kapatch.inspect(sock).enabled is False

        def test_readable_diff(assert_keepalive):
            with connect() as sock:
                assert_keepalive(sock, "balanced")
        """,
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*RuntimeError: the test fails after installing*",
            "*keepalive does not match the policy (idle 60s, interval 10s, count 5, "
            "user timeout 110000ms (auto)) on 1 of 1 socket(s):*",
            "*- enabled: kernel has False, policy wants True*",
            "*- user_timeout_ms: kernel has 0, policy wants 110000*",
            "*kernel reports: keepalive off, idle 7200, interval 75, count 9, user timeout 0ms*",
        ]
    )


def test_marker_and_kapatch_installed(pytester: pytest.Pytester, redis_server: RedisServer) -> None:
    result = _run_inner(
        pytester,
        f"""
        import socket, pytest, kapatch

        @pytest.mark.kapatch(profile="fast-failover", overrides={{"socket": {{"count": "4"}}}})
        def test_marked(kapatch_installed, assert_keepalive):
            assert kapatch_installed.config.profile == "fast-failover"
            with socket.create_connection(({redis_server.host!r}, {redis_server.port}), timeout=5) as sock:
                state = assert_keepalive(sock, adapter="socket")[0]
            assert (state.idle, state.interval, state.count) == (10, 5, 4)

        def test_unmarked_gets_the_default(kapatch_installed):
            assert kapatch_installed.config.profile == "balanced"

        def test_after():
            assert not kapatch.status().installed
        """,
    )
    result.assert_outcomes(passed=3)


def test_fixture_restores_an_earlier_installation(pytester: pytest.Pytester) -> None:
    result = _run_inner(
        pytester,
        """
        import kapatch

        kapatch.install(profile="aws", environ={})  # as KAPATCH_ENABLED=1 would have done

        def test_inner(kapatch_install):
            kapatch_install(profile="fast-failover")
            assert kapatch.status().config.profile == "fast-failover"

        def test_after():
            assert kapatch.status().config.profile == "aws"
            kapatch.uninstall()
        """,
    )
    result.assert_outcomes(passed=2)


def test_fixture_ignores_the_shell_environment_unless_asked(pytester: pytest.Pytester) -> None:
    pytester._monkeypatch.setenv("KAPATCH_PROFILE", "gcp")
    pytester.makepyfile(
        test_inner="""
        import os

        def test_isolated(kapatch_install):
            assert kapatch_install().config.profile == "balanced"

        def test_opt_in(kapatch_install):
            assert kapatch_install(environ=os.environ).config.profile == "gcp"
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_loading_the_plugin_installs_nothing_and_imports_no_client() -> None:
    script = (
        "import socket, sys, kapatch.pytest_plugin, kapatch; "
        "print(kapatch.status().installed, 'connect' in vars(socket.socket), "
        "sorted(m for m in ('redis', 'urllib3', 'psycopg', 'requests') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "False False []", done.stdout + done.stderr


STRICT_SUITE = """
import socket, sys

def test_kapatch_booted_and_the_plugin_serves(assert_keepalive):
    assert "kapatch.config" in sys.modules  # read at interpreter start, before pytest
    import kapatch
    assert kapatch.status().installed
    assert callable(assert_keepalive)
"""


def run_strict_pytest(
    python: str, directory: Path, how: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A user's suite that turns every warning into an error, run with KAPATCH_ENABLED=1."""
    (directory / "test_strict.py").write_text(STRICT_SUITE)
    args = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"]
    if how == "-W error":
        args += ["-W", "error"]
    else:
        (directory / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    error\n")
    return subprocess.run(
        args, cwd=directory, env={**env, "KAPATCH_ENABLED": "1"}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("how", ["-W error", "filterwarnings = error"])
def test_a_suite_that_makes_warnings_errors_starts_with_kapatch_enabled(tmp_path: Path, how: str) -> None:
    """pytest marks the plugin's distribution (kapatch, _kapatch_gate) for assertion rewriting and
    warned that they were imported already: at interpreter start. Under -W error that killed the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    # TEST_KAPATCH_PYTHON: scripts/test runs this against the installed wheel too, where the
    # kapatch package itself (not only _kapatch_gate) is among the files pytest marks
    python = os.environ.get("TEST_KAPATCH_PYTHON") or sys.executable
    done = run_strict_pytest(python, tmp_path, how, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "cannot be rewritten" not in done.stdout + done.stderr


# --- assert_keepalive on real clients ---------------------------------------------------------
def test_redis_client_and_connection(
    kapatch_install: Install, assert_keepalive: Callable[..., Any], redis_server: RedisServer
) -> None:
    kapatch_install(overrides={"redis": {"idle": "12s"}})
    client = redis.Redis.from_url(redis_server.url)
    with pytest.raises(ValueError, match="no open TCP connection"):
        assert_keepalive(client)  # nothing connected yet
    try:
        assert client.ping()
        states = assert_keepalive(client, adapter="redis")
        assert [s.idle for s in states] == [12]
        with pytest.raises(AssertionError, match=r"- idle: kernel has 12, policy wants 60"):
            assert_keepalive(client)  # the global policy is not what redis got
        pool: Any = client.connection_pool
        try:
            connection = pool.get_connection()
        except TypeError:  # redis-py 5 requires a command name
            connection = pool.get_connection("PING")
        try:
            assert_keepalive(connection, adapter="redis")
        finally:
            pool.release(connection)
    finally:
        client.close()


def test_redis_asyncio_client(
    kapatch_install: Install, assert_keepalive: Callable[..., Any], redis_server: RedisServer
) -> None:
    kapatch_install(profile="fast-failover")

    async def scenario() -> list[kapatch.KeepaliveState]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            assert await client.ping()
            return assert_keepalive(client, "fast-failover")  # type: ignore[no-any-return]
        finally:
            await client.aclose()

    states = asyncio.run(scenario())
    assert [(s.idle, s.interval, s.count) for s in states] == [(10, 5, 3)]


def test_urllib3_pool_response_and_requests_session(
    kapatch_install: Install, assert_keepalive: Callable[..., Any], http_server: HttpServer
) -> None:
    kapatch_install(profile="azure")
    with urllib3.PoolManager() as manager:
        response = manager.request("GET", f"{http_server.url}/ok", preload_content=False)
        assert assert_keepalive(response, "azure")[0].idle == 120
        response.read()
        response.release_conn()
        assert len(assert_keepalive(manager, "azure")) == 1  # the idle pooled connection
    with requests.Session() as session:
        assert session.get(f"{http_server.url}/ok", timeout=5).status_code == 200
        assert [s.idle for s in assert_keepalive(session, "azure")] == [120]


def test_httpx_streaming_response(
    kapatch_install: Install, assert_keepalive: Callable[..., Any], http_server: HttpServer
) -> None:
    httpx = pytest.importorskip("httpx")
    kapatch_install(overrides={"httpx": {"idle": "33s"}})
    with (
        httpx.Client(trust_env=False, timeout=5) as client,
        client.stream("GET", f"{http_server.url}/ok") as response,
    ):
        assert [s.idle for s in assert_keepalive(response, adapter="httpx")] == [33]


def test_psycopg_connection(
    kapatch_install: Install, assert_keepalive: Callable[..., Any], postgres_server: PostgresServer
) -> None:
    kapatch_install(idle="20s", interval="4s", count=3)
    with psycopg.connect(postgres_server.dsn) as conn:
        states = assert_keepalive(conn, adapter="psycopg")
        assert (states[0].idle, states[0].user_timeout_ms) == (20, 32000)
        fd = conn.pgconn.socket
        assert_keepalive(fd, idle="20s", interval="4s", count=3)  # a raw descriptor works too
        os.fstat(fd)  # libpq's own descriptor is still open: only the duplicate was closed
        conn.execute("select 1")


def test_helper_without_kapatch_installed(redis_server: RedisServer) -> None:
    with socket.create_connection((redis_server.host, redis_server.port), timeout=5) as sock:
        with pytest.raises(AssertionError, match="enabled: kernel has False, policy wants True"):
            assert_keepalive_helper(sock, "aws")
        kapatch.apply(sock, kapatch.PROFILES["aws"].policy)
        assert assert_keepalive_helper(sock, "aws") == keepalive_states(sock)
        with pytest.raises(AssertionError, match="count: kernel has 4, policy wants 9"):
            assert_keepalive_helper(sock, "aws", count=9)
    with pytest.raises(TypeError, match=r"cannot find the socket of builtins\.str"):
        assert_keepalive_helper("not a connection", "aws")
