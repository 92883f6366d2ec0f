"""The mysqlclient adapter (MySQLdb, SQLAlchemy mysql+mysqldb, Django mysql) against a real private MariaDB.

libmariadb connects in C; the adapter configures the socket right after
``Connection.__init__`` returns. Every assertion reads the options back from the live
connection's own descriptor (``conn.fileno()``) through a duplicate. MySQLdb is imported
here at module level, i.e. before ``install()``; the imported-after case runs in a fresh
interpreter. Policy: idle 13, interval 3, count 4 -> user timeout auto 25 000 ms.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import MySQLdb
import MySQLdb.connections
import pytest
import sqlalchemy

import kapatch
from kapatch import KeepaliveState, Rule
from kapatch.adapters.mysqlclient import MysqlclientAdapter

WANTED = KeepaliveState(True, 13, 3, 4, 25000)
SETTINGS: dict[str, Any] = {"idle": "13s", "interval": "3s", "count": 4}
ORIGINAL_INIT = vars(MySQLdb.connections.Connection)["__init__"]


def state(conn: Any) -> KeepaliveState:
    duplicate = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return kapatch.inspect(duplicate)
    finally:
        duplicate.close()  # the duplicate only; libmariadb's descriptor stays open


def connect_state(server: Any, **kwargs: Any) -> KeepaliveState:
    conn = MySQLdb.connect(**{**server.kwargs, **kwargs})
    try:
        cursor = conn.cursor()
        cursor.execute("select 1")
        assert cursor.fetchone() == (1,)
        return state(conn)
    finally:
        conn.close()


def counts() -> dict[str, int]:
    return dict(kapatch.status().adapter("mysqlclient").counts)


def zero(**changes: int) -> dict[str, int]:
    return {"configured": 0, "respected": 0, "skipped": 0, "failed": 0, "uncovered": 0, **changes}


@pytest.fixture(scope="module")
def library_default(mariadb_server: Any) -> KeepaliveState:
    """Without kapatch: libmariadb turns SO_KEEPALIVE on itself, with the kernel's timings."""
    assert not kapatch.status().installed
    return connect_state(mariadb_server)


def test_library_default_is_keepalive_on_with_kernel_timings(library_default: KeepaliveState) -> None:
    probe = socket.socket()
    try:
        kernel = kapatch.inspect(probe)
    finally:
        probe.close()
    assert library_default == KeepaliveState(True, kernel.idle, kernel.interval, kernel.count, 0)


def test_connect_carries_the_policy(install: Any, mariadb_server: Any) -> None:
    install(**SETTINGS)
    assert connect_state(mariadb_server) == WANTED
    conn = MySQLdb.connections.Connection(**mariadb_server.kwargs)  # the class, as Django does
    try:
        assert state(conn) == WANTED
    finally:
        conn.close()
    assert counts() == zero(configured=2)
    # The library's SO_KEEPALIVE is not the application's choice: nothing "kept".
    assert kapatch.status().adapter("mysqlclient").kept == {}


def test_positional_host_and_subclass(install: Any, mariadb_server: Any) -> None:
    class MyConnection(MySQLdb.connections.Connection):  # type: ignore[misc]
        pass

    install(**SETTINGS, rules=[Rule.build("127.0.0.0/8", idle="21s")])
    conn = MyConnection(mariadb_server.host, mariadb_server.user, port=mariadb_server.port)
    try:
        assert isinstance(conn, MyConnection)
        assert state(conn) == KeepaliveState(True, 21, 3, 4, 33000)
    finally:
        conn.close()


def test_sqlalchemy_engine(install: Any, mariadb_server: Any) -> None:
    install(**SETTINGS)
    engine = sqlalchemy.create_engine(mariadb_server.url, pool_size=2)
    try:
        with engine.connect() as first, engine.connect() as second:
            assert first.execute(sqlalchemy.text("select 1")).scalar() == 1
            for conn in (first, second):
                dbapi_connection: Any = conn.connection.dbapi_connection
                assert isinstance(dbapi_connection, MySQLdb.connections.Connection)
                assert state(dbapi_connection) == WANTED
    finally:
        engine.dispose()
    assert counts()["configured"] == 2


def test_the_applications_own_setting_after_connect_wins(install: Any, mariadb_server: Any) -> None:
    """mysqlclient has no keepalive option: what the application sets on fileno() comes last and stays."""
    install(**SETTINGS)
    conn = MySQLdb.connect(**mariadb_server.kwargs)
    try:
        mine = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            mine.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33)
        finally:
            mine.close()
        cursor = conn.cursor()
        cursor.execute("select 1")
        assert state(conn) == KeepaliveState(True, 33, 3, 4, 25000)
    finally:
        conn.close()


def test_override_mode(install: Any, mariadb_server: Any) -> None:
    install(**SETTINGS, mode="override")
    assert connect_state(mariadb_server) == WANTED
    assert counts() == zero(configured=1)


def test_per_adapter_override_and_environment(install: Any, mariadb_server: Any) -> None:
    install(**SETTINGS, overrides={"mysqlclient": {"idle": "17s", "user_timeout": "off"}})
    assert connect_state(mariadb_server) == KeepaliveState(True, 17, 3, 4, 0)
    kapatch.uninstall()
    install(environ={"KAPATCH_IDLE": "13s", "KAPATCH_INTERVAL": "3s", "KAPATCH_COUNT": "4",
                     "KAPATCH_MYSQLCLIENT_IDLE": "19s"})  # fmt: skip
    assert connect_state(mariadb_server) == KeepaliveState(True, 19, 3, 4, 31000)


def test_skip_rule_leaves_the_library_default(
    install: Any, mariadb_server: Any, library_default: KeepaliveState
) -> None:
    install(**SETTINGS, rules=[Rule.build(f"127.0.0.1:{mariadb_server.port}", skip=True)])
    assert connect_state(mariadb_server) == library_default
    assert counts() == zero(skipped=1)


def test_unix_socket_connection_is_left_alone(install: Any, mariadb_server: Any) -> None:
    """For MySQL, host='localhost' means the Unix socket: not TCP, not counted."""
    install(**SETTINGS)
    for kwargs in ({"unix_socket": str(mariadb_server.socket_path)},
                   {"host": "localhost", "unix_socket": str(mariadb_server.socket_path)}):  # fmt: skip
        conn = MySQLdb.connect(user=mariadb_server.user, **kwargs)
        try:
            assert "UNIX socket" in conn.get_host_info()
            duplicate = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                assert duplicate.family == socket.AF_UNIX
            finally:
                duplicate.close()
        finally:
            conn.close()
    assert counts() == zero()


def test_a_failed_connect_raises_mysqldbs_own_error(install: Any, mariadb_server: Any) -> None:
    install(**SETTINGS)
    with pytest.raises(MySQLdb.OperationalError):
        MySQLdb.connect(**{**mariadb_server.kwargs, "user": "kapatch-no-such-user"})
    assert counts() == zero()


def test_a_failure_inside_the_adapter_never_stops_the_connection(
    install: Any, mariadb_server: Any, library_default: KeepaliveState, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr("kapatch._fdsocket.configure_fd", broken)
    install(**SETTINGS)
    assert connect_state(mariadb_server) == library_default
    assert counts() == zero(failed=1)


def test_imported_after_install(mariadb_server: Any) -> None:
    script = textwrap.dedent(
        f"""
        import json, os, socket, sys
        import kapatch
        assert "MySQLdb" not in sys.modules
        kapatch.install(environ={{}}, idle="13s", interval="3s", count=4)
        waiting = kapatch.status().adapter("mysqlclient").reason
        import MySQLdb
        conn = MySQLdb.connect(**{mariadb_server.kwargs!r})
        dup = socket.socket(fileno=os.dup(conn.fileno()))
        s = kapatch.inspect(dup)
        dup.close()
        out = {{"waiting": waiting, "state": [s.enabled, s.idle, s.interval, s.count, s.user_timeout_ms],
                "counts": dict(kapatch.status().adapter("mysqlclient").counts)}}
        conn.close()
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["waiting"] == "waiting for import of MySQLdb.connections"
    assert out["state"] == [True, 13, 3, 4, 25000]
    assert out["counts"]["configured"] == 1


def test_django_mysql_backend(mariadb_server: Any) -> None:
    server = mariadb_server
    script = textwrap.dedent(
        f"""
        import json, os, socket
        import kapatch
        kapatch.install(environ={{}}, idle="13s", interval="3s", count=4)
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{
            "ENGINE": "django.db.backends.mysql", "HOST": {server.host!r}, "PORT": {server.port},
            "USER": {server.user!r}, "NAME": "mysql",
        }}}})
        django.setup()
        from django.db import connection
        with connection.cursor() as cursor:
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
        dup = socket.socket(fileno=os.dup(connection.connection.fileno()))
        s = kapatch.inspect(dup)
        dup.close()
        print(json.dumps({{"state": [s.enabled, s.idle, s.interval, s.count, s.user_timeout_ms],
                           "counts": dict(kapatch.status().adapter("mysqlclient").counts)}}))
        connection.close()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["state"] == [True, 13, 3, 4, 25000]
    assert out["counts"]["configured"] == 1


def test_uninstall_restores_identical_objects(
    install: Any, mariadb_server: Any, library_default: KeepaliveState
) -> None:
    status = install(**SETTINGS)
    assert status.adapter("mysqlclient").reason == "patched"
    assert vars(MySQLdb.connections.Connection)["__init__"] is not ORIGINAL_INIT
    assert connect_state(mariadb_server) == WANTED
    kapatch.uninstall()
    assert vars(MySQLdb.connections.Connection)["__init__"] is ORIGINAL_INIT
    assert connect_state(mariadb_server) == library_default
    kapatch.uninstall()  # idempotent


def test_supported_versions() -> None:
    assert MysqlclientAdapter.unavailable_reason() is None
    assert MysqlclientAdapter.supported_range() == ">=2.1, <3"
