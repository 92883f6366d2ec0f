"""The psycopg_pool adapter: heartbeat (the pool's check=) and max_idle, on a private PostgreSQL.

A pooled connection whose backend was terminated (``pg_terminate_backend``) or frozen
(SIGSTOP of the backend process serving it, always SIGCONT in a finally) is handed out
again: without kapatch the application gets an error, or blocks (shown with a cap); with
a heartbeat the pool hands out a working connection, within heartbeat_timeout + 1 s.
The server is this module's own (freezing a backend of the session server would be safe,
but a stuck test would then hurt every other test).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
import pytest
from servers import PostgresServer, start_postgres

import kapatch
from kapatch.adapters.psycopg_pool import PsycopgPoolAdapter

Install = Callable[..., kapatch.Status]
ORIGINAL_INIT = vars(psycopg_pool.ConnectionPool)["__init__"]
ORIGINAL_ASYNC_INIT = vars(psycopg_pool.AsyncConnectionPool)["__init__"]

HEARTBEAT = {"heartbeat": "1s", "heartbeat_timeout": "1500ms"}
TIMEOUT_S = 1.5
BOUND_S = TIMEOUT_S + 1.5  # the probe's deadline, then a new connection (loopback: ~10 ms)
CAP_S = 4.0  # how long "blocks" is watched without kapatch

_UNAVAILABLE = PsycopgPoolAdapter.unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with start_postgres() as server:
        yield server


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def terminate(pg: PostgresServer, pid: int) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)  # the backend is gone; its FATAL message waits in our socket


def pool_counts() -> dict[str, int]:
    return dict(kapatch.status().adapter("psycopg_pool").pool)


def new_pool(pg: PostgresServer, **kwargs: Any) -> psycopg_pool.ConnectionPool[Any]:
    kwargs = {"min_size": 1, "max_size": 1, "timeout": 10, **kwargs}
    pool = psycopg_pool.ConnectionPool(pg.dsn, open=True, **kwargs)
    pool.wait(10)
    return pool


def backend_pid(pool: psycopg_pool.ConnectionPool[Any]) -> int:
    with pool.connection() as conn:
        return conn.info.backend_pid


def select_one(pool: psycopg_pool.ConnectionPool[Any], cap: float) -> tuple[object, float]:
    """``select 1`` through the pool in a thread: (its result or exception or "blocked", seconds)."""
    outcome: list[object] = ["blocked"]

    def run() -> None:
        try:
            with pool.connection() as conn:
                outcome[0] = conn.execute("select 1").fetchone()
        except Exception as error:
            outcome[0] = error

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(cap)
    return outcome[0], time.monotonic() - start


# -- sync ------------------------------------------------------------------------------
@pytest.mark.parametrize("with_kapatch", [False, True], ids=["without", "with"])
def test_frozen_backend(pg: PostgresServer, install: Install, with_kapatch: bool) -> None:
    if with_kapatch:
        install(**HEARTBEAT)
    pool = new_pool(pg)
    try:
        pid = backend_pid(pool)
        time.sleep(1.2)  # idle longer than the heartbeat
        with frozen(pid):
            result, took = select_one(pool, CAP_S)
        if with_kapatch:
            assert result == (1,)
            assert took < BOUND_S
            assert pool_counts() == {
                "heartbeats_sent": 1,
                "heartbeats_failed": 1,
                "replaced": 1,
                "evicted": 0,
            }
            assert backend_pid(pool) != pid
        else:
            assert result == "blocked"
            assert took >= CAP_S
    finally:
        pool.close(timeout=5)


@pytest.mark.parametrize("with_kapatch", [False, True], ids=["without", "with"])
def test_terminated_backend(pg: PostgresServer, install: Install, with_kapatch: bool) -> None:
    if with_kapatch:
        install(**HEARTBEAT)
    pool = new_pool(pg)
    try:
        pid = backend_pid(pool)
        terminate(pg, pid)
        time.sleep(1.0)
        result, took = select_one(pool, CAP_S)
        if with_kapatch:
            assert result == (1,)
            assert took < BOUND_S
            assert pool_counts()["replaced"] == 1
        else:
            assert isinstance(result, psycopg.OperationalError)  # AdminShutdown
    finally:
        pool.close(timeout=5)


def test_recent_connection_not_probed(pg: PostgresServer, install: Install) -> None:
    """Used less than heartbeat ago: the check returns at once, no query."""
    install(heartbeat="30s")
    pool = new_pool(pg)
    try:
        for _ in range(5):
            assert select_one(pool, 5)[0] == (1,)
        assert pool_counts()["heartbeats_sent"] == 0
    finally:
        pool.close(timeout=5)


def test_max_idle_discards_before_reuse(pg: PostgresServer, install: Install) -> None:
    """psycopg_pool's own max_idle keeps min_size connections however idle: kapatch discards at getconn."""
    install(max_idle="1s")
    pool = new_pool(pg)
    try:
        assert pool.max_idle == 1.0  # the native argument, for the pool's shrinking
        pid = backend_pid(pool)
        assert backend_pid(pool) == pid  # just used: reused
        time.sleep(1.3)
        start = time.monotonic()
        assert backend_pid(pool) != pid
        assert time.monotonic() - start < 1.0
        assert pool_counts()["evicted"] == 1
    finally:
        pool.close(timeout=5)


def test_respect_keeps_the_applications_check_and_max_idle(pg: PostgresServer, install: Install) -> None:
    install(**HEARTBEAT, max_idle="1s")
    calls: list[int] = []
    pool = new_pool(pg, check=lambda conn: calls.append(1), max_idle=300.0)
    try:
        assert pool.max_idle == 300.0
        pid = backend_pid(pool)
        time.sleep(1.3)
        assert backend_pid(pool) == pid  # neither discarded nor probed: the application's settings
        assert calls == [1, 1]
        assert pool_counts() == dict.fromkeys(
            ("heartbeats_sent", "heartbeats_failed", "replaced", "evicted"), 0
        )
    finally:
        pool.close(timeout=5)


def test_override_runs_heartbeat_then_the_applications_check(pg: PostgresServer, install: Install) -> None:
    install(**HEARTBEAT, mode="override")
    calls: list[int] = []
    pool = new_pool(pg, check=lambda conn: calls.append(conn.info.backend_pid), max_idle=300.0)
    try:
        pid = backend_pid(pool)
        time.sleep(1.2)
        with frozen(pid):
            result, took = select_one(pool, CAP_S)
        assert result == (1,)
        assert took < BOUND_S
        assert pid in calls[:1]  # first handout: fresh, no probe; the application's check ran
        assert pid not in calls[1:]  # the frozen one never reached the application's check
        assert pool_counts()["replaced"] == 1
    finally:
        pool.close(timeout=5)


def test_null_pool_and_no_pool_fields_left_alone(pg: PostgresServer, install: Install) -> None:
    install(**HEARTBEAT)
    null = psycopg_pool.NullConnectionPool(pg.dsn, open=True)
    try:
        assert null._check is None
    finally:
        null.close()
    kapatch.uninstall()
    install()  # no heartbeat, no max_idle: the pool as the application made it
    pool = new_pool(pg)
    try:
        assert pool._check is None
        assert pool._reset is None
        assert pool.max_idle == 600.0
    finally:
        pool.close(timeout=5)


def test_never_breaks_the_pool(pg: PostgresServer, install: Install) -> None:
    """A conninfo kapatch cannot read: the pool is made; disable restores __init__ exactly."""
    install(**HEARTBEAT)
    pool = psycopg_pool.ConnectionPool(object(), open=False)  # type: ignore[arg-type]
    assert pool.conninfo is not None
    assert vars(psycopg_pool.ConnectionPool)["__init__"] is not ORIGINAL_INIT
    kapatch.uninstall()
    assert vars(psycopg_pool.ConnectionPool)["__init__"] is ORIGINAL_INIT
    assert vars(psycopg_pool.AsyncConnectionPool)["__init__"] is ORIGINAL_ASYNC_INIT
    assert PsycopgPoolAdapter.heartbeat_mechanism and PsycopgPoolAdapter.max_idle_mechanism


# -- async -----------------------------------------------------------------------------
async def async_scenario(pg: PostgresServer, kill: str) -> tuple[object, float]:
    pool = psycopg_pool.AsyncConnectionPool(pg.dsn, min_size=1, max_size=1, timeout=10, open=False)
    await pool.open(wait=True, timeout=10)

    async def select_one() -> object:
        async with pool.connection() as conn:
            return await (await conn.execute("select 1")).fetchone()

    try:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        await asyncio.sleep(1.2)
        start = time.monotonic()
        if kill == "freeze":
            # Not wait_for: cancelling a query makes psycopg (3.1) wait for the frozen backend.
            # Wait with a cap, resume the backend, and only then cancel what is still blocked.
            task = asyncio.ensure_future(select_one())
            with frozen(pid):
                done, _ = await asyncio.wait({task}, timeout=CAP_S)
                took = time.monotonic() - start
            result: object = task.result() if done else "blocked"
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=10)
        else:
            await asyncio.to_thread(terminate, pg, pid)
            start = time.monotonic()
            try:
                result = await select_one()
            except psycopg.OperationalError as error:
                result = error
            took = time.monotonic() - start
        return result, took
    finally:
        await pool.close(timeout=5)


@pytest.mark.parametrize("kill", ["freeze", "terminate"])
@pytest.mark.parametrize("with_kapatch", [False, True], ids=["without", "with"])
async def test_async(pg: PostgresServer, install: Install, with_kapatch: bool, kill: str) -> None:
    if with_kapatch:
        install(**HEARTBEAT)
    result, took = await async_scenario(pg, kill)
    if with_kapatch:
        assert result == (1,)
        assert took < BOUND_S
        assert pool_counts()["replaced"] == 1
    elif kill == "freeze":
        assert result == "blocked"
        assert took >= CAP_S
    else:
        assert isinstance(result, psycopg.OperationalError)
