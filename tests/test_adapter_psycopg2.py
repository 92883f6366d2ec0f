"""The psycopg2 adapter (direct, connection_factory, psycopg2.pool, SQLAlchemy, Django) against a
real private PostgreSQL.

libpq connects in C, so every assertion reads the options back from the connection's
own socket: ``conn.fileno()`` is libpq's descriptor, inspected through a duplicate
(``os.dup``) so closing the Python socket never closes libpq's. psycopg2 is imported here
at module level, i.e. before ``install()``; the imported-after case and Django run in a
fresh interpreter. Policy: idle 13, interval 3, count 4 -> user timeout auto 25 000 ms.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest
import sqlalchemy

import kapatch
from kapatch import KeepaliveState, Policy, Rule
from kapatch.adapters.psycopg2 import Psycopg2Adapter

POLICY = Policy(idle=13, interval=3, count=4)  # user timeout auto: 25 000 ms
WANTED = KeepaliveState(True, 13, 3, 4, 25000)
SETTINGS: dict[str, Any] = {"idle": "13s", "interval": "3s", "count": 4}

# Taken at import, before any test installs kapatch.
ORIGINAL_CONNECT_C = vars(psycopg2)["_connect"]
ORIGINAL_CONNECT = psycopg2.connect
from psycopg2 import connect as connect_bound_before_install  # noqa: E402 - the point of the test


def state(conn: Any) -> KeepaliveState:
    """The keepalive options of *conn*'s own socket (libpq's), read with getsockopt."""
    duplicate = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return kapatch.inspect(duplicate)
    finally:
        duplicate.close()  # closes the duplicate only; libpq's descriptor stays open


def connect_state(dsn: str | None = None, **kwargs: Any) -> KeepaliveState:
    conn = psycopg2.connect(dsn, **kwargs)
    try:
        with conn.cursor() as cursor:
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
        return state(conn)
    finally:
        conn.close()


def counts() -> dict[str, int]:
    return dict(kapatch.status().adapter("psycopg2").counts)


def zero(**changes: int) -> dict[str, int]:
    return {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0, **changes}


@pytest.fixture(scope="module")
def libpq_default(postgres_server: Any) -> KeepaliveState:
    """What a psycopg2 connection carries without kapatch (libpq: keepalive on, OS timings)."""
    assert not kapatch.status().installed
    return connect_state(postgres_server.dsn)


# --- the ways applications connect ---------------------------------------------------


def test_dsn_url_and_keywords(install: Any, postgres_server: Any, libpq_default: KeepaliveState) -> None:
    assert libpq_default.idle != 13
    install(**SETTINGS)
    assert connect_state(postgres_server.dsn) == WANTED
    assert connect_state(postgres_server.url) == WANTED
    server = postgres_server
    assert (
        connect_state(host=server.host, port=server.port, user=server.user, database=server.dbname) == WANTED
    )
    assert connect_state(f"host={server.host}", port=server.port, user=server.user) == WANTED
    assert counts() == zero(configured=4)


def test_a_binding_made_before_install_is_covered(install: Any, postgres_server: Any) -> None:
    """The wrap sits on psycopg2._connect, which psycopg2.connect looks up at each call."""
    install(**SETTINGS)
    assert psycopg2.connect is ORIGINAL_CONNECT  # the Python function itself is not replaced
    conn = connect_bound_before_install(postgres_server.dsn)
    try:
        assert state(conn) == WANTED
    finally:
        conn.close()


def test_connection_factory_and_cursor_factory(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS)
    conn = psycopg2.connect(
        postgres_server.dsn,
        connection_factory=psycopg2.extras.LoggingConnection,
        cursor_factory=psycopg2.extras.RealDictCursor,
    )
    try:
        assert isinstance(conn, psycopg2.extras.LoggingConnection)
        assert state(conn) == WANTED
        conn.initialize(open(os.devnull, "w"))  # noqa: SIM115 - LoggingConnection keeps it
        with conn.cursor() as cursor:
            cursor.execute("select 1 as one")
            assert cursor.fetchone() == {"one": 1}
    finally:
        conn.close()


def test_async_connection(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS)
    conn = psycopg2.connect(postgres_server.dsn, async_=1)
    try:
        while True:  # psycopg2's documented polling loop
            status = conn.poll()
            if status == psycopg2.extensions.POLL_OK:
                break
            fds = (
                ([conn.fileno()], [], [])
                if status == psycopg2.extensions.POLL_READ
                else ([], [conn.fileno()], [])
            )
            select.select(*fds, 10)
        assert conn.isexecuting() is False
        assert state(conn) == WANTED
    finally:
        conn.close()


def test_green_wait_callback(install: Any, postgres_server: Any) -> None:
    """psycogreen only installs a wait callback (psycopg2.extensions.set_wait_callback); the
    connection still goes through psycopg2.connect. psycopg2's own wait_select stands in for it."""
    install(**SETTINGS)
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        assert psycopg2.extensions.get_wait_callback() is psycopg2.extras.wait_select
        assert connect_state(postgres_server.dsn) == WANTED
    finally:
        psycopg2.extensions.set_wait_callback(None)
    assert counts() == zero(configured=1)


def test_psycopg2_pool(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS)
    pool = psycopg2.pool.ThreadedConnectionPool(2, 3, postgres_server.dsn, application_name="kapatch-test")
    try:
        first, second = pool.getconn(), pool.getconn()
        assert state(first) == state(second) == WANTED
        pool.putconn(first)
        pool.putconn(second)
        simple = psycopg2.pool.SimpleConnectionPool(1, 1, dsn=postgres_server.dsn)
        try:
            assert state(simple.getconn()) == WANTED
        finally:
            simple.closeall()
    finally:
        pool.closeall()
    assert counts()["configured"] == 3


def test_sqlalchemy_engine(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS)
    url = postgres_server.url.replace("postgresql://", "postgresql+psycopg2://", 1)
    engine = sqlalchemy.create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
            dbapi_connection: Any = conn.connection.dbapi_connection
            assert isinstance(dbapi_connection, psycopg2.extensions.connection)
            assert state(dbapi_connection) == WANTED
        # connect_args reach libpq through psycopg2.connect too: the application's idle wins.
        own = sqlalchemy.create_engine(url, connect_args={"keepalives_idle": 31})
        with own.connect() as conn:
            assert state(conn.connection.dbapi_connection) == KeepaliveState(True, 31, 3, 4, 43000)
        own.dispose()
    finally:
        engine.dispose()


# Put in place of the "# STATE" line of a child script (after dedent, so at column 0).
CHILD_STATE = (
    "def state(fd):\n"
    "    dup = socket.socket(fileno=os.dup(fd))\n"
    "    try:\n"
    "        s = kapatch.inspect(dup)\n"
    "    finally:\n"
    "        dup.close()\n"
    "    return [s.enabled, s.idle, s.interval, s.count, s.user_timeout_ms]"
)


def run_child(script: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script).replace("# STATE", CHILD_STATE)],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_django_postgresql_backend_on_psycopg2(postgres_server: Any) -> None:
    """Django 4.2+ prefers psycopg 3 when it is installed (it is, here): the child hides it,
    so Django's postgresql backend runs on psycopg2, as in a project that has only psycopg2."""
    server = postgres_server
    out = run_child(
        f"""
        import json, os, socket, sys
        sys.modules["psycopg"] = None  # as if psycopg 3 were not installed: Django takes psycopg2
        import kapatch
        kapatch.install(environ={{}}, idle="13s", interval="3s", count=4)
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{
            "ENGINE": "django.db.backends.postgresql", "HOST": {server.host!r},
            "PORT": {server.port}, "USER": {server.user!r}, "NAME": {server.dbname!r},
        }}}})
        django.setup()
        from django.db import connection
        # STATE
        with connection.cursor() as cursor:
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
        out = {{"driver": connection.Database.__name__, "state": state(connection.connection.fileno()),
                "counts": dict(kapatch.status().adapter("psycopg2").counts)}}
        connection.close()
        print(json.dumps(out))
        """
    )
    assert out["driver"] == "psycopg2"
    assert out["state"] == [True, 13, 3, 4, 25000]
    assert out["counts"]["configured"] == 1


def test_imported_after_install(postgres_server: Any) -> None:
    out = run_child(
        f"""
        import json, os, socket, sys
        import kapatch
        assert "psycopg2" not in sys.modules
        kapatch.install(environ={{}}, idle="13s", interval="3s", count=4)
        waiting = kapatch.status().adapter("psycopg2").reason
        import psycopg2, psycopg2.pool
        # STATE
        conn = psycopg2.connect({postgres_server.dsn!r})
        pool = psycopg2.pool.SimpleConnectionPool(1, 1, {postgres_server.dsn!r})
        out = {{"waiting": waiting, "direct": state(conn.fileno()), "pool": state(pool.getconn().fileno()),
                "counts": dict(kapatch.status().adapter("psycopg2").counts)}}
        conn.close()
        pool.closeall()
        kapatch.uninstall()
        print(json.dumps(out))
        """
    )
    assert out["waiting"] == "waiting for import of psycopg2"
    assert out["direct"] == out["pool"] == [True, 13, 3, 4, 25000]
    assert out["counts"]["configured"] == 2


# --- respect mode (the default), field by field, and override mode ---------------------


def test_respect_mode_keeps_each_field_the_application_gave(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS)
    dsn = postgres_server.dsn
    # idle alone: the application's idle, the policy's interval and count, and the auto user
    # timeout spanning the application's idle: 33 + 3 * 4 s.
    assert connect_state(f"{dsn} keepalives_idle=33") == KeepaliveState(True, 33, 3, 4, 45000)
    assert connect_state(dsn, keepalives_interval=7) == KeepaliveState(True, 13, 7, 4, 41000)
    assert connect_state(dsn, tcp_user_timeout=4000) == KeepaliveState(True, 13, 3, 4, 4000)
    assert counts() == zero(configured=3)
    every = "keepalives=1 keepalives_idle=31 keepalives_interval=2 keepalives_count=6 tcp_user_timeout=7000"
    assert connect_state(f"{dsn} {every}") == KeepaliveState(True, 31, 2, 6, 7000)
    off = connect_state(dsn, keepalives=0)  # keepalive off chooses every field with libpq
    assert (off.enabled, off.user_timeout_ms) == (False, 0)
    assert counts() == zero(configured=3, respected=2)
    assert kapatch.status().adapter("psycopg2").kept["idle"] == 3


def test_service_file_and_environment(
    install: Any, postgres_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts from PG* variables and from a service file are TCP: the policy goes on; the
    file's keepalive parameters are the application's."""
    server = postgres_server
    service = tmp_path / "pg_service.conf"
    service.write_text(f"[kp]\nhost=127.0.0.1\nport={server.port}\nuser={server.user}\nkeepalives_count=6\n")
    install(**SETTINGS)
    monkeypatch.setenv("PGHOST", server.host)
    monkeypatch.setenv("PGPORT", str(server.port))
    assert connect_state(f"user={server.user} dbname={server.dbname}") == WANTED
    monkeypatch.delenv("PGHOST")
    monkeypatch.delenv("PGPORT")
    monkeypatch.setenv("PGSERVICEFILE", str(service))
    assert connect_state("service=kp") == KeepaliveState(True, 13, 3, 6, 31000)


def test_override_mode_replaces_the_applications_settings(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS, mode="override")
    dsn = f"{postgres_server.dsn} keepalives=0 keepalives_idle=33 tcp_user_timeout=4000"
    assert connect_state(dsn) == WANTED
    assert connect_state(postgres_server.dsn, keepalives_idle=35, keepalives_count=9) == WANTED
    assert counts() == zero(configured=2)


def test_override_to_os_timings_removes_explicit_values(
    install: Any, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(profile="os-default", mode="override")
    assert connect_state(f"{postgres_server.dsn} keepalives_idle=33 tcp_user_timeout=4000") == libpq_default


def test_per_adapter_override_and_environment(install: Any, postgres_server: Any) -> None:
    install(overrides={"psycopg2": {"idle": "17s"}}, **SETTINGS)
    assert connect_state(postgres_server.dsn) == KeepaliveState(True, 17, 3, 4, 29000)
    kapatch.uninstall()
    install(environ={"KAPATCH_IDLE": "13s", "KAPATCH_INTERVAL": "3s", "KAPATCH_COUNT": "4",
                     "KAPATCH_PSYCOPG2_IDLE": "19s", "KAPATCH_PSYCOPG_IDLE": "5s"})  # fmt: skip
    assert connect_state(postgres_server.dsn) == KeepaliveState(True, 19, 3, 4, 31000)


def test_skip_rule_leaves_libpq_default(
    install: Any, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    install(**SETTINGS, rules=[Rule.build(f"127.0.0.1:{postgres_server.port}", skip=True)])
    assert connect_state(postgres_server.dsn) == libpq_default
    assert counts() == zero(skipped=1)


def test_rule_by_host_name(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS, rules=[Rule.build("localhost", idle="21s")])
    assert connect_state(host="localhost", port=postgres_server.port, user=postgres_server.user).idle == 21
    assert connect_state(postgres_server.dsn) == WANTED


def test_unix_socket_connection_is_left_alone(install: Any, postgres_server: Any) -> None:
    install(**SETTINGS)
    conn = psycopg2.connect(host=str(postgres_server.socket_dir), port=postgres_server.port, user="postgres")
    try:
        duplicate = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            assert duplicate.family == socket.AF_UNIX
        finally:
            duplicate.close()
        assert "keepalives" not in conn.dsn  # the dsn as the application wrote it
    finally:
        conn.close()
    assert counts() == zero()


def test_the_added_parameters_are_visible_in_the_dsn(install: Any, postgres_server: Any) -> None:
    """Documented (README, module docstring): libpq gets the parameters in the dsn, so
    conn.dsn and conn.info.dsn_parameters show them."""
    install(**SETTINGS)
    conn = psycopg2.connect(postgres_server.dsn)
    try:
        assert "keepalives_idle=13" in conn.dsn
        assert conn.info.dsn_parameters["keepalives_idle"] == "13"
        assert conn.info.dsn_parameters["tcp_user_timeout"] == "25000"
    finally:
        conn.close()


def test_malformed_dsn_raises_psycopg2s_own_error(install: Any) -> None:
    install(**SETTINGS)
    with pytest.raises(psycopg2.ProgrammingError):
        psycopg2.connect("host=127.0.0.1 this-is-not-a-parameter")
    assert counts() == zero()


def test_a_failure_inside_the_adapter_never_stops_the_connection(
    install: Any, postgres_server: Any, libpq_default: KeepaliveState, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr("kapatch.adapters.psycopg2.plan_parameters", broken)
    install(**SETTINGS)
    assert connect_state(postgres_server.dsn) == libpq_default
    assert counts() == zero(failed=1)


# --- uninstall, versions ---------------------------------------------------------------


def test_uninstall_restores_identical_objects(
    install: Any, postgres_server: Any, libpq_default: KeepaliveState
) -> None:
    status = install(**SETTINGS)
    assert status.adapter("psycopg2").reason == "patched"
    assert vars(psycopg2)["_connect"] is not ORIGINAL_CONNECT_C
    assert connect_state(postgres_server.dsn) == WANTED
    kapatch.uninstall()
    assert vars(psycopg2)["_connect"] is ORIGINAL_CONNECT_C
    assert psycopg2.connect is ORIGINAL_CONNECT
    assert connect_state(postgres_server.dsn) == libpq_default
    install(**SETTINGS)
    install(idle="12s", interval="3s", count=4)  # reinstall: wrapped once, new policy
    assert connect_state(postgres_server.dsn) == KeepaliveState(True, 12, 3, 4, 24000)
    assert counts() == zero(configured=1)


def test_version_found_from_whichever_distribution_is_installed() -> None:
    from importlib import metadata

    found = Psycopg2Adapter.installed_distribution()
    assert found is not None
    name, version = found
    assert name in ("psycopg2", "psycopg2-binary")
    assert version == metadata.version(name)
    assert Psycopg2Adapter.unavailable_reason() is None
    assert Psycopg2Adapter.supported_range() == ">=2.8, <3"


def test_neither_distribution_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Psycopg2Adapter, "alternative_distributions", ("kapatch-no-such-dist",))
    monkeypatch.setattr(Psycopg2Adapter, "distribution", "kapatch-no-such-dist-either")
    assert Psycopg2Adapter.unavailable_reason() == (
        "kapatch-no-such-dist-either or kapatch-no-such-dist is not installed"
    )
