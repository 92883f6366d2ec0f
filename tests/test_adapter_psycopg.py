"""The psycopg 3 adapter (sync, asyncio, psycopg_pool) against a real private PostgreSQL.

libpq connects in C, so every assertion reads the options back from the connection's
own socket: ``conn.pgconn.socket`` is libpq's file descriptor, inspected through a
duplicate (``os.dup``) so closing the Python socket never closes libpq's.
psycopg is imported here at module level, i.e. before ``install()``; the imported-after
case runs in a fresh interpreter. Runs on psycopg 3.1 to 3.3.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest

import kapatch
from kapatch import KeepaliveState, Policy, Rule
from kapatch.adapters._libpq import chosen_in_parameters
from kapatch.adapters.psycopg import PsycopgAdapter, libpq_destination, libpq_parameters, service_parameters
from kapatch.profiles import PROFILES
from kapatch.rules import Destination

POLICY = Policy(idle=11, interval=3, count=4)  # user timeout auto: 23 000 ms
FAST = PROFILES["fast-failover"].policy  # idle 10, interval 5, count 3, user timeout 25 s

# Taken at import, before any test installs kapatch.
ORIGINAL_CONNECT = vars(psycopg.Connection)["connect"]
ORIGINAL_ASYNC_CONNECT = vars(psycopg.AsyncConnection)["connect"]
ORIGINAL_MODULE_CONNECT = vars(psycopg)["connect"]

Install = Callable[..., kapatch.Status]


@pytest.fixture(scope="module")
def libpq_default(postgres_server: Any) -> KeepaliveState:
    """What a psycopg connection carries without kapatch (libpq: keepalive on, OS timings)."""
    assert not kapatch.status().installed
    with psycopg.connect(postgres_server.dsn) as conn:
        return state(conn)


def state(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> KeepaliveState:
    """The keepalive options of *conn*'s own socket, read with getsockopt."""
    duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return kapatch.inspect(duplicate)
    finally:
        duplicate.close()  # closes the duplicate only; libpq's descriptor stays open


def exact(policy: Policy) -> KeepaliveState:
    return KeepaliveState(
        enabled=True,
        idle=policy.idle,
        interval=policy.interval,
        count=policy.count,
        user_timeout_ms=policy.user_timeout_ms or 0,
    )


def counts() -> dict[str, int]:
    return dict(kapatch.status().adapter("psycopg").counts)


def connect_state(dsn: str, **kwargs: Any) -> KeepaliveState:
    with psycopg.connect(dsn, **kwargs) as conn:
        return state(conn)


# --- the libpq parameters a policy becomes -------------------------------------------


def test_parameters_for_a_timed_policy() -> None:
    assert libpq_parameters(POLICY) == {
        "keepalives": 1,
        "keepalives_idle": 11,
        "keepalives_interval": 3,
        "keepalives_count": 4,
        "tcp_user_timeout": 23000,
    }


def test_parameters_for_os_timings_and_for_an_old_libpq() -> None:
    assert libpq_parameters(PROFILES["os-default"].policy) == {"keepalives": 1}
    assert "tcp_user_timeout" not in libpq_parameters(POLICY, user_timeout_supported=False)
    assert "tcp_user_timeout" not in libpq_parameters(POLICY.evolve(user_timeout="off"))


def test_parameters_leave_the_kept_fields_to_the_application() -> None:
    """Field by field: a kept field's parameter is left out; an auto user timeout spans the
    application's own timings where it kept them, not the policy's."""
    given = {"keepalives_idle": "30"}
    assert libpq_parameters(POLICY, kept=frozenset({"idle"}), given=given) == {
        "keepalives": 1,
        "keepalives_interval": 3,
        "keepalives_count": 4,
        "tcp_user_timeout": (30 + 3 * 4) * 1000,
    }
    given = {"keepalives_idle": "30", "keepalives_interval": "2", "keepalives_count": "5"}
    kept = frozenset({"idle", "interval", "count"})
    assert libpq_parameters(POLICY, kept=kept, given=given) == {"keepalives": 1, "tcp_user_timeout": 40000}
    # keepalive off: libpq sets no user timeout on such a socket, so none is passed.
    off = frozenset({"enabled", "idle", "interval", "count"})
    assert libpq_parameters(POLICY, kept=off, given={"keepalives": "0"}) == {}
    assert libpq_parameters(POLICY, kept=frozenset({"user_timeout"}), given={}) == {
        "keepalives": 1, "keepalives_idle": 11, "keepalives_interval": 3, "keepalives_count": 4,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params", "chosen"),
    [
        ({}, set()),
        ({"keepalives": None, "keepalives_idle": ""}, set()),  # None and empty are "not given"
        ({"keepalives_idle": "30"}, {"idle"}),
        ({"keepalives": "1"}, {"enabled"}),
        ({"keepalives": "0"}, {"enabled", "idle", "interval", "count", "user_timeout"}),
        ({"tcp_user_timeout": 0}, {"user_timeout"}),
        ({"keepalives_interval": 2, "keepalives_count": 3}, {"interval", "count"}),
    ],
)
def test_chosen_fields_from_parameters(params: dict[str, object], chosen: set[str]) -> None:
    assert chosen_in_parameters(params) == chosen


@pytest.mark.parametrize(
    ("params", "environ", "expected"),
    [
        ({"host": "db.internal"}, {}, Destination("db.internal", None, 5432)),
        ({"host": "10.1.2.3", "port": "6432"}, {}, Destination("10.1.2.3", None, 6432)),
        ({"host": "db.internal", "hostaddr": "10.1.2.3"}, {}, Destination("db.internal", "10.1.2.3", 5432)),
        ({"hostaddr": "10.1.2.3"}, {}, Destination("10.1.2.3", "10.1.2.3", 5432)),
        # Multi-host: the first TCP host; one port for all, or one per host.
        (
            {"host": "/run/postgresql,a.internal,b.internal", "port": "1,2,3"},
            {},
            Destination("a.internal", None, 2),
        ),
        ({"host": "a.internal,b.internal", "port": "6000"}, {}, Destination("a.internal", None, 6000)),
        # What the conninfo leaves out, libpq reads from the environment.
        ({}, {"PGHOST": "env.internal", "PGPORT": "7000"}, Destination("env.internal", None, 7000)),
        ({"port": "1"}, {"PGHOST": "env.internal", "PGPORT": "7000"}, Destination("env.internal", None, 1)),
    ],
)
def test_destination_from_conninfo(
    params: dict[str, str], environ: dict[str, str], expected: Destination
) -> None:
    assert libpq_destination(params, environ) == expected


@pytest.mark.parametrize(
    "params",
    [{}, {"host": ""}, {"host": "/run/postgresql"}, {"host": "@abstract"}, {"host": "/a,/b"}],
)
def test_unix_sockets_are_not_tcp(params: dict[str, str]) -> None:
    if sys.platform == "win32":
        pytest.skip("libpq's default host on Windows is localhost")
    assert libpq_destination(params, {}) is None


def test_empty_host_is_libpqs_default_not_pghost() -> None:
    """libpq reads PGHOST only for a host left out; ``host=''`` means its default socket."""
    if sys.platform == "win32":
        pytest.skip("libpq's default host on Windows is localhost")
    assert libpq_destination({"host": ""}, {"PGHOST": "env.internal"}) is None
    assert libpq_destination({}, {"PGHOST": "env.internal"}) == Destination("env.internal", None, 5432)


# --- sync, async and pools: the exact effective policy on the connection's socket ------


def test_sync_connection_carries_the_policy(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    with psycopg.Connection.connect(postgres_server.dsn) as conn:
        assert state(conn) == exact(POLICY)
        assert conn.execute("select 1").fetchone() == (1,)
    assert counts()["configured"] == 1


def test_module_connect_url_and_subclass(install: Install, postgres_server: Any) -> None:
    """``psycopg.connect`` is a binding made at import; a user's subclass inherits the wrap."""

    class MyConnection(psycopg.Connection[Any]):
        pass

    install(idle="11s", interval="3s", count=4)
    assert connect_state(postgres_server.url) == exact(POLICY)
    with MyConnection.connect(postgres_server.dsn) as conn:
        assert isinstance(conn, MyConnection)
        assert state(conn) == exact(POLICY)
    assert counts()["configured"] == 2


async def test_async_connection_carries_the_policy(install: Install, postgres_server: Any) -> None:
    install(profile="fast-failover")
    async with await psycopg.AsyncConnection.connect(postgres_server.dsn) as conn:
        assert state(conn) == exact(FAST)
        cursor = await conn.execute("select 1")
        assert await cursor.fetchone() == (1,)
    assert counts()["configured"] == 1


def test_connection_pool(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    with psycopg_pool.ConnectionPool(postgres_server.dsn, min_size=2, max_size=2, open=True) as pool:
        pool.wait(timeout=30)
        with pool.connection() as first, pool.connection() as second:
            assert state(first) == exact(POLICY)
            assert state(second) == exact(POLICY)
    assert counts()["configured"] == 2


async def test_async_connection_pool(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    pool = psycopg_pool.AsyncConnectionPool(postgres_server.dsn, min_size=1, max_size=1, open=False)
    async with pool:
        await pool.wait(timeout=30)
        async with pool.connection() as conn:
            assert state(conn) == exact(POLICY)
    assert counts()["configured"] == 1


def test_user_timeout_off(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4, user_timeout="off")
    assert connect_state(postgres_server.dsn) == KeepaliveState(True, 11, 3, 4, 0)


def test_os_default_profile_keeps_libpq_default(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(profile="os-default")
    assert connect_state(postgres_server.dsn) == libpq_default
    assert counts()["configured"] == 1


# --- per-adapter overrides and per-destination rules ---------------------------------


def test_per_adapter_override_beats_the_global_policy(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4, overrides={"psycopg": {"idle": "17s"}})
    assert connect_state(postgres_server.dsn) == exact(POLICY.evolve(idle=17))


def test_per_adapter_environment_variable(install: Install, postgres_server: Any) -> None:
    install(environ={"KAPATCH_IDLE": "11s", "KAPATCH_INTERVAL": "3s", "KAPATCH_COUNT": "4",
                     "KAPATCH_PSYCOPG_IDLE": "19s"})  # fmt: skip
    assert connect_state(postgres_server.dsn) == exact(POLICY.evolve(idle=19))


def test_skip_rule_leaves_libpq_default(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(
        idle="11s", interval="3s", count=4, rules=[Rule.build(f"127.0.0.1:{postgres_server.port}", skip=True)]
    )
    assert connect_state(postgres_server.dsn) == libpq_default
    assert counts() == {"configured": 0, "respected": 0, "skipped": 1, "failed": 0, "uncovered": 0}


def test_rule_by_host_name(install: Install, postgres_server: Any) -> None:
    """Rules see the name the application gave, not only the IP libpq resolves in C."""
    install(idle="11s", interval="3s", count=4, rules=[Rule.build("localhost", idle="21s")])
    dsn = f"host=localhost port={postgres_server.port} user={postgres_server.user}"
    assert connect_state(dsn) == exact(POLICY.evolve(idle=21))
    assert connect_state(postgres_server.dsn) == exact(POLICY)  # 127.0.0.1: no match


def test_first_tcp_host_decides(install: Install, postgres_server: Any) -> None:
    """host=<unix dir>,127.0.0.1: libpq tries the (missing) socket, then TCP; the rule for 127.0.0.1 holds."""
    missing = Path(postgres_server.socket_dir) / "missing"
    install(idle="11s", interval="3s", count=4, rules=[Rule.build("127.0.0.0/8", idle="23s")])
    dsn = f"host={missing},127.0.0.1 port={postgres_server.port} user={postgres_server.user}"
    assert connect_state(dsn) == exact(POLICY.evolve(idle=23))


def test_unix_socket_connection_is_left_alone(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    dsn = f"host={postgres_server.socket_dir} port={postgres_server.port} user={postgres_server.user}"
    with psycopg.connect(dsn) as conn:
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            assert duplicate.family == socket.AF_UNIX
        finally:
            duplicate.close()
        assert conn.execute("select 1").fetchone() == (1,)
    assert counts() == {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}


def write_service_file(path: Path, server: Any, *extra: str) -> Path:
    lines = ["# a libpq service file", "[other]", "host=/nowhere", "[kapatch_test]",
             "host=127.0.0.1", f"port={server.port}", f"user={server.user}", *extra]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_service_file_supplies_the_host(
    install: Install, postgres_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``service=`` names a pg_service.conf section: its host is TCP, so the policy applies."""
    monkeypatch.setenv(
        "PGSERVICEFILE", str(write_service_file(tmp_path / "pg_service.conf", postgres_server))
    )
    install(idle="11s", interval="3s", count=4, rules=[Rule.build(f"*:{postgres_server.port}", idle="27s")])
    assert connect_state("service=kapatch_test") == exact(POLICY.evolve(idle=27))
    monkeypatch.setenv("PGSERVICE", "kapatch_test")
    assert connect_state("") == exact(POLICY.evolve(idle=27))


def test_service_file_keepalive_is_explicit(
    install: Install, postgres_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_service_file(tmp_path / "pg_service.conf", postgres_server, "keepalives_idle=36")
    monkeypatch.setenv("PGSERVICEFILE", str(path))
    install(idle="11s", interval="3s", count=4)
    # Field by field (was: all left alone, "respected"): the file's idle is kept, the
    # fields it does not set get the policy, the auto user timeout spans 36 + 3 * 4 s.
    assert connect_state("service=kapatch_test") == KeepaliveState(True, 36, 3, 4, 48000)
    assert counts()["configured"] == 1
    assert kapatch.status().adapter("psycopg").kept == {"idle": 1}


def test_service_parameters_lookup(tmp_path: Path) -> None:
    user = tmp_path / "user.conf"
    user.write_text("[a]\nhost=user.internal\n")
    system = tmp_path / "pg_service.conf"
    system.write_text("[a]\nhost=system.internal\n[b]\nhost=b.internal\nport=1\n[c]\nport=2\n")
    environ = {"PGSERVICEFILE": str(user), "PGSYSCONFDIR": str(tmp_path)}
    assert service_parameters({"service": "a"}, environ) == {"host": "user.internal"}
    assert service_parameters({"service": "b"}, environ) == {"host": "b.internal", "port": "1"}
    assert service_parameters({}, {**environ, "PGSERVICE": "b"}) == {"host": "b.internal", "port": "1"}
    assert service_parameters({"service": "a", "servicefile": str(system)}, {}) == {"host": "system.internal"}
    assert service_parameters({"service": "missing"}, environ) == {}
    assert service_parameters({}, environ) == {}


# --- respect and override modes ------------------------------------------------------


def test_respect_mode_keeps_explicit_idle_in_conninfo(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(idle="11s", interval="3s", count=4)
    assert connect_state(f"{postgres_server.dsn} keepalives_idle=33").idle == 33
    url = f"{postgres_server.url}?keepalives_idle=34"
    found = connect_state(url)
    # Field by field (was: libpq's interval/count and no user timeout, "respected"): only the
    # idle is the application's; interval and count are the policy's, and the auto user timeout
    # spans the application's idle: 34 + 3 * 4 s.
    assert found == KeepaliveState(True, 34, 3, 4, 46000)
    assert (found.interval, found.count) != (libpq_default.interval, libpq_default.count)
    assert counts() == {"configured": 2, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}


def test_respect_mode_keeps_every_field_the_application_gave(install: Install, postgres_server: Any) -> None:
    """All five given: nothing left for the policy, the connection is counted as respected."""
    install(idle="11s", interval="3s", count=4)
    dsn = (f"{postgres_server.dsn} keepalives=1 keepalives_idle=31 keepalives_interval=2 "
           "keepalives_count=6 tcp_user_timeout=7000")  # fmt: skip
    assert connect_state(dsn) == KeepaliveState(True, 31, 2, 6, 7000)
    assert counts() == {"configured": 0, "respected": 1, "skipped": 0, "failed": 0, "uncovered": 0}


def test_respect_mode_keeps_explicit_kwargs(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    assert connect_state(postgres_server.dsn, keepalives_idle=35).idle == 35
    # keepalives=0 chooses every field: libpq sets tcp_user_timeout only together with
    # keepalive, so no parameter could give this connection the policy's user timeout.
    off = connect_state(postgres_server.dsn, keepalives=0, tcp_user_timeout=9000)
    assert (off.enabled, off.user_timeout_ms) == (False, 0)
    assert not connect_state(postgres_server.dsn, keepalives=0).enabled
    with psycopg_pool.ConnectionPool(
        postgres_server.dsn, min_size=1, max_size=1, kwargs={"tcp_user_timeout": 4000}
    ) as pool, pool.connection() as conn:  # fmt: skip
        assert state(conn).user_timeout_ms == 4000
        # Field by field (was: idle != 11, libpq's default): the timings nobody chose get the policy.
        assert state(conn) == KeepaliveState(True, 11, 3, 4, 4000)
    assert connect_state(postgres_server.dsn, keepalives_idle=35) == KeepaliveState(True, 35, 3, 4, 47000)
    assert counts() == {"configured": 3, "respected": 2, "skipped": 0, "failed": 0, "uncovered": 0}
    assert kapatch.status().adapter("psycopg").kept == {
        "idle": 4, "enabled": 2, "interval": 2, "count": 2, "user_timeout": 3,
    }  # fmt: skip


def test_override_mode_replaces_explicit_settings(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4, mode="override")
    assert connect_state(f"{postgres_server.dsn} keepalives_idle=33 keepalives=0") == exact(POLICY)
    assert connect_state(postgres_server.dsn, keepalives_idle=35, tcp_user_timeout=4000) == exact(POLICY)
    assert counts()["configured"] == 2


def test_override_to_os_timings_removes_explicit_values(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    """The policy leaves timings to the OS: the user's values must go, from the string and the kwargs."""
    install(profile="os-default", mode="override")
    dsn = f"{postgres_server.dsn} keepalives_idle=33 tcp_user_timeout=4000"
    assert connect_state(dsn, keepalives_interval=7) == libpq_default


def test_conninfo_given_as_keyword(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4, mode="override")
    with psycopg.Connection.connect(conninfo=f"{postgres_server.dsn} keepalives_idle=33") as conn:
        assert state(conn) == exact(POLICY)


def test_psycopg_keywords_still_reach_psycopg(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    with psycopg.connect(postgres_server.dsn, autocommit=True, prepare_threshold=None) as conn:
        assert conn.autocommit
        assert conn.prepare_threshold is None
        assert state(conn) == exact(POLICY)


def test_malformed_conninfo_raises_psycopgs_own_error(install: Install) -> None:
    install(idle="11s", interval="3s", count=4)
    with pytest.raises(psycopg.ProgrammingError):
        psycopg.connect("host=127.0.0.1 this-is-not-a-parameter")
    assert counts() == {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}


# --- import order, uninstall, status -------------------------------------------------


def test_imported_before_install(install: Install, postgres_server: Any) -> None:
    assert "psycopg" in sys.modules  # this module imported it at collection time
    status = install(idle="11s", interval="3s", count=4)
    assert status.adapter("psycopg").reason == "patched"
    assert connect_state(postgres_server.dsn) == exact(POLICY)


def test_imported_after_install(postgres_server: Any) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, socket, sys
        import kapatch
        assert "psycopg" not in sys.modules
        kapatch.install(environ={{}}, idle="11s", interval="3s", count=4)
        print(json.dumps({{"waiting": kapatch.status().adapter("psycopg").reason}}))
        import psycopg, psycopg_pool

        def state(conn):
            dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                s = kapatch.inspect(dup)
            finally:
                dup.close()
            return [s.enabled, s.idle, s.interval, s.count, s.user_timeout_ms]

        out = {{}}
        with psycopg.connect({postgres_server.dsn!r}) as conn:
            out["sync"] = state(conn)
        async def main():
            async with await psycopg.AsyncConnection.connect({postgres_server.dsn!r}) as conn:
                out["async"] = state(conn)
        asyncio.run(main())
        with psycopg_pool.ConnectionPool({postgres_server.dsn!r}, min_size=1, max_size=1) as pool:
            with pool.connection() as conn:
                out["pool"] = state(conn)
        out["counts"] = dict(kapatch.status().adapter("psycopg").counts)
        kapatch.uninstall()
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert json.loads(first) == {"waiting": "waiting for import of psycopg"}
    out = json.loads(second)
    wanted = [True, 11, 3, 4, 23000]
    assert out["sync"] == out["async"] == out["pool"] == wanted
    assert out["counts"]["configured"] == 3


def test_uninstall_restores_identical_objects_and_libpq_defaults(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(idle="11s", interval="3s", count=4)
    assert vars(psycopg.Connection)["connect"] is not ORIGINAL_CONNECT
    assert vars(psycopg.AsyncConnection)["connect"] is not ORIGINAL_ASYNC_CONNECT
    assert vars(psycopg)["connect"] is not ORIGINAL_MODULE_CONNECT
    assert connect_state(postgres_server.dsn) == exact(POLICY)
    kapatch.uninstall()
    assert vars(psycopg.Connection)["connect"] is ORIGINAL_CONNECT
    assert vars(psycopg.AsyncConnection)["connect"] is ORIGINAL_ASYNC_CONNECT
    assert vars(psycopg)["connect"] is ORIGINAL_MODULE_CONNECT
    assert isinstance(ORIGINAL_CONNECT, classmethod)
    assert connect_state(postgres_server.dsn) == libpq_default
    kapatch.uninstall()  # idempotent


async def test_async_after_uninstall_has_libpq_defaults(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(idle="11s", interval="3s", count=4)
    kapatch.uninstall()
    async with await psycopg.AsyncConnection.connect(postgres_server.dsn) as conn:
        assert state(conn) == libpq_default


def test_reinstall_does_not_wrap_twice(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4)
    install(idle="12s", interval="3s", count=4)
    assert connect_state(postgres_server.dsn) == exact(POLICY.evolve(idle=12))
    assert counts()["configured"] == 1
    kapatch.uninstall()
    assert vars(psycopg.Connection)["connect"] is ORIGINAL_CONNECT


def test_status_counters_move(install: Install, postgres_server: Any) -> None:
    install(idle="11s", interval="3s", count=4, rules=[Rule.build("localhost", skip=True)])
    assert counts() == {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0}
    connect_state(postgres_server.dsn)
    connect_state(postgres_server.dsn, keepalives_idle=40)  # idle kept, the rest configured
    connect_state(  # every field the application's: respected
        postgres_server.dsn, keepalives=1, keepalives_idle=40, keepalives_interval=2, keepalives_count=3,
        tcp_user_timeout=5000,
    )  # fmt: skip
    connect_state(f"host=localhost port={postgres_server.port} user={postgres_server.user}")
    assert counts() == {"configured": 2, "respected": 1, "skipped": 1, "failed": 0, "uncovered": 0}
    entry = kapatch.status().adapter("psycopg")
    assert entry.enabled
    assert entry.policy == POLICY


def test_disabled_adapter_leaves_connections_alone(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(idle="11s", interval="3s", count=4, disabled_adapters=["psycopg"])
    assert vars(psycopg.Connection)["connect"] is ORIGINAL_CONNECT
    assert connect_state(postgres_server.dsn) == libpq_default


def test_a_failure_inside_the_adapter_never_stops_the_connection(
    install: Install, postgres_server: Any, libpq_default: KeepaliveState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: whatever breaks while preparing parameters, the connect goes on unchanged."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr("kapatch.adapters._libpq.libpq_destination", broken)
    install(idle="11s", interval="3s", count=4)
    assert connect_state(postgres_server.dsn) == libpq_default
    assert counts()["failed"] == 1


def test_async_connect_is_still_a_coroutine_function(install: Install) -> None:
    install(idle="11s", interval="3s", count=4)
    assert vars(psycopg.AsyncConnection)["connect"] is not ORIGINAL_ASYNC_CONNECT
    assert inspect.iscoroutinefunction(psycopg.AsyncConnection.connect)
    assert inspect.signature(psycopg.connect) == inspect.signature(ORIGINAL_MODULE_CONNECT)


def test_supported_versions() -> None:
    assert PsycopgAdapter.unavailable_reason() is None
    assert PsycopgAdapter.supported_range() == ">=3.1, <4"
