"""psycopg_pool (``ConnectionPool``, ``AsyncConnectionPool``): ``heartbeat`` and ``max_idle``.

The pool's connections are psycopg's: their keepalive comes from the ``psycopg`` adapter.
This adapter carries the two pool fields, through the pool's own arguments, by wrapping
``ConnectionPool.__init__`` and ``AsyncConnectionPool.__init__`` (null pools keep no
connections: left alone):

* ``heartbeat`` -> ``check=``: psycopg_pool calls it on every ``getconn()`` /
  ``connection()``, and on an exception discards the connection and hands out another.
  kapatch's check returns at once for a connection used less than ``heartbeat`` ago;
  an older one gets an empty query, sent through libpq in non-blocking mode and waited
  for on its socket with a deadline of ``heartbeat_timeout``. psycopg_pool's own
  ``check_connection`` does the same query without a deadline, so a frozen server
  (a stopped backend process: its kernel still acknowledges) blocks it forever.
* ``max_idle`` -> ``max_idle=`` (seconds). psycopg_pool's max_idle only *shrinks* the pool:
  every max_idle seconds a background task closes one connection above ``min_size`` if
  that many went unused; a connection kept by ``min_size`` is reused however long it sat.
  So the check also discards (counted ``evicted``) any connection idle longer than
  ``max_idle`` at the moment it would be handed out.

Idle time is measured from the connection's last return to the pool, or its creation
(recorded by ``reset=`` and ``configure=`` callbacks chained in front of the application's:
psycopg_pool 3.2 keeps neither time on the connection).

Cost to the application: after a failed check psycopg_pool tries the next connection at
once (a second failure in the same getconn waits about 1 s, then 2 s, ...: its backoff),
so a ``getconn()`` meeting a dead or evicted connection returns a working one in the time
of a new connect, and one meeting a frozen server after ``heartbeat_timeout`` more, with
no error (measured on loopback with heartbeat_timeout 1.5 s: frozen 1.51 s, terminated
under 10 ms). A pool ``timeout`` shorter than that turns it into ``PoolTimeout``.

Respect mode: an application's ``check=`` keeps kapatch's heartbeat off for that pool (its
own check runs; a ``max_idle`` discard still goes in front of it); an application's
``max_idle=`` keeps the policy's ``max_idle`` off altogether. Override mode: the policy's
``max_idle`` replaces the application's, and kapatch's heartbeat runs first, then the
application's check, on a connection already proven alive (so a check of its own that has
no deadline no longer meets a frozen server). Rules see the pool's conninfo host and port.
"""

from __future__ import annotations

from time import monotonic

from ..rules import Destination
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any, ClassVar
    from weakref import WeakKeyDictionary

    from ._context import AdapterContext

__all__ = ["PoolGuard", "PsycopgPoolAdapter"]

_NAME = "psycopg_pool"


class PsycopgPoolAdapter(Adapter):
    name: ClassVar[str] = _NAME
    pooled = True
    distribution = "psycopg-pool"
    modules = ("psycopg_pool",)
    minimum_version = (3, 2)  # check= arrived in 3.2
    below_version = (4,)
    heartbeat_mechanism = (
        "psycopg_pool check=: an empty query on a connection idle longer than heartbeat, "
        "bounded by heartbeat_timeout, at getconn"
    )
    max_idle_mechanism = (
        "psycopg_pool max_idle= (shrinks above min_size), and a discard at getconn of a "
        "connection idle longer than max_idle"
    )

    def patch(self, module_name: str) -> None:
        import psycopg_pool

        self.patcher.wrap(psycopg_pool.ConnectionPool, "__init__", self._init_wrapper(asynchronous=False))
        self.patcher.wrap(psycopg_pool.AsyncConnectionPool, "__init__", self._init_wrapper(asynchronous=True))

    def _init_wrapper(
        self, *, asynchronous: bool
    ) -> Callable[[Callable[..., Any], object, tuple[Any, ...], dict[str, Any]], Any]:
        def wrapper(
            wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            try:
                kwargs = self._pool_kwargs(instance, args, kwargs, asynchronous=asynchronous)
            except Exception as error:  # never stop the application from making its pool
                if self.context is not None:
                    self.context.record_failure(self.name, "preparing psycopg_pool arguments", error)
            return wrapped(*args, **kwargs)

        return wrapper

    def _pool_kwargs(
        self, pool: object, args: tuple[Any, ...], kwargs: dict[str, Any], *, asynchronous: bool
    ) -> dict[str, Any]:
        """The pool's keyword arguments with the policy's check, reset and max_idle; or unchanged."""
        context = self.context
        if context is None or _is_null_pool(pool):
            return kwargs
        conninfo = args[0] if args else kwargs.get("conninfo", "")
        decision = context.policy_for(self.name, _destination(conninfo, kwargs.get("kwargs")))
        policy = decision.policy
        if decision.action == "skip" or policy is None or not policy.enabled:
            return kwargs
        override = context.config_for(self.name).mode == "override"
        user_check = kwargs.get("check")
        heartbeat = policy.heartbeat_s if (user_check is None or override) else None
        max_idle = policy.max_idle_s if (kwargs.get("max_idle") is None or override) else None
        if heartbeat is None and max_idle is None:
            return kwargs
        guard = PoolGuard(context, heartbeat, policy.heartbeat_timeout_s, max_idle)
        new = dict(kwargs)
        if max_idle is not None:
            new["max_idle"] = max_idle
        # A connection's last activity: when the pool made it (configure) or took it back (reset).
        touch = guard.async_touch if asynchronous else guard.sync_touch
        new["check"] = guard.async_check(user_check) if asynchronous else guard.sync_check(user_check)
        new["configure"] = touch(kwargs.get("configure"))
        new["reset"] = touch(kwargs.get("reset"))
        return new


def _is_null_pool(pool: object) -> bool:
    import psycopg_pool

    return isinstance(pool, (psycopg_pool.NullConnectionPool, psycopg_pool.AsyncNullConnectionPool))


def _destination(conninfo: object, extra: object) -> Destination:
    """Where the pool connects (host and port of its conninfo), for the rules; no address if unknown."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        from ._libpq import libpq_destination

        more = {str(k): v for k, v in extra.items()} if isinstance(extra, dict) else {}
        found = libpq_destination(conninfo_to_dict(conninfo if isinstance(conninfo, str) else "", **more))
    except Exception:  # a malformed conninfo: psycopg reports it when the pool connects
        return Destination()
    return found or Destination()


class HeartbeatFailed(Exception):
    """The connection failed kapatch's check (raised to psycopg_pool only, which discards it)."""


class PoolGuard:
    """One pool's heartbeat and max_idle: its ``check`` and ``reset`` callbacks."""

    def __init__(
        self, context: AdapterContext, heartbeat: float | None, timeout: float, max_idle: float | None
    ) -> None:
        self.context = context
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.max_idle = max_idle
        import weakref  # here, not at the top: adapters load at interpreter start

        # When each connection last came back to the pool; weak: the pool owns them.
        self.returned: WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    # -- decisions, shared by sync and async ------------------------------------
    def _idle_for(self, conn: Any) -> float | None:
        since = self.returned.get(conn)
        if since is None:
            since = getattr(conn, "_created_at", None)  # set by psycopg_pool on a new connection
        return None if not isinstance(since, float) else monotonic() - since

    def _verdict(self, conn: Any) -> str:
        """``"evict"``, ``"probe"`` or ``"pass"`` for a connection about to be handed out."""
        try:
            idle = self._idle_for(conn)
            if self.max_idle is not None and idle is not None and idle > self.max_idle:
                return "evict"
            if self.heartbeat is not None and (idle is None or idle >= self.heartbeat):
                return "probe"
        except Exception as error:
            self.context.record_failure(_NAME, "reading a pooled connection's idle time", error)
        return "pass"

    def _discard(self, conn: Any, event: str, why: str) -> HeartbeatFailed:
        """Close *conn* (so psycopg_pool drops it instead of putting it back) and say why."""
        self.context.count_pool(_NAME, event)
        try:
            # pgconn.finish(), not conn.close(): with close_returns=True close() returns it to the pool.
            conn.pgconn.finish()
        except Exception as error:
            self.context.record_failure(_NAME, "closing a pooled connection", error)
        return HeartbeatFailed(f"kapatch: {why}: connection discarded")

    def _evicted(self, conn: Any) -> HeartbeatFailed:
        return self._discard(conn, "evicted", f"idle longer than max_idle ({self.max_idle:g} s)")

    def _failed(self, conn: Any, error: BaseException) -> HeartbeatFailed:
        self.context.count_pool(_NAME, "heartbeats_failed")
        return self._discard(conn, "replaced", f"heartbeat failed ({error})")

    def _returned(self, conn: Any) -> None:
        try:
            self.returned[conn] = monotonic()
        except Exception as error:
            self.context.record_failure(_NAME, "recording a connection's return", error)

    # -- sync ------------------------------------------------------------------
    def sync_check(self, user_check: Callable[[Any], None] | None) -> Callable[[Any], None]:
        def check(conn: Any) -> None:
            verdict = self._verdict(conn)
            if verdict == "evict":
                raise self._evicted(conn)
            if verdict == "probe":
                self.context.count_pool(_NAME, "heartbeats_sent")
                try:
                    _probe(conn.pgconn, self.timeout)
                except Exception as error:
                    raise self._failed(conn, error) from error
            if user_check is not None:
                user_check(conn)

        return check

    def sync_touch(self, user_callback: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """Record the connection's activity now, then run the application's own callback."""

        def touch(conn: Any) -> None:
            self._returned(conn)
            if user_callback is not None:
                user_callback(conn)

        return touch

    # -- async -----------------------------------------------------------------
    def async_check(
        self, user_check: Callable[[Any], Awaitable[None]] | None
    ) -> Callable[[Any], Awaitable[None]]:
        async def check(conn: Any) -> None:
            verdict = self._verdict(conn)
            if verdict == "evict":
                raise self._evicted(conn)
            if verdict == "probe":
                self.context.count_pool(_NAME, "heartbeats_sent")
                try:
                    await _probe_async(conn.pgconn, self.timeout)
                except Exception as error:
                    raise self._failed(conn, error) from error
            if user_check is not None:
                await user_check(conn)

        return check

    def async_touch(
        self, user_callback: Callable[[Any], Awaitable[None]] | None
    ) -> Callable[[Any], Awaitable[None]]:
        async def touch(conn: Any) -> None:
            self._returned(conn)
            if user_callback is not None:
                await user_callback(conn)

        return touch


# -- the probe: an empty query through libpq, non-blocking, with a deadline ------------
_READ = "read"
_WRITE = "write"


def _probe(pgconn: Any, timeout: float) -> None:
    """Send ``""`` and read its reply within *timeout* seconds, or raise."""
    import selectors

    steps = _probe_steps(pgconn)
    deadline = monotonic() + timeout
    try:
        events = next(steps)
        while True:
            remaining = deadline - monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(
                    pgconn.socket, selectors.EVENT_READ if events == _READ else selectors.EVENT_WRITE
                )
                if remaining <= 0 or not selector.select(remaining):
                    raise TimeoutError(f"no reply within {timeout:g} s")
            events = next(steps)
    except StopIteration:
        return


async def _probe_async(pgconn: Any, timeout: float) -> None:
    """:func:`_probe` on the running event loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    steps = _probe_steps(pgconn)
    deadline = monotonic() + timeout
    try:
        events = next(steps)
        while True:
            ready = loop.create_future()
            fd = pgconn.socket

            def wake(ready: asyncio.Future[None] = ready) -> None:
                if not ready.done():
                    ready.set_result(None)

            watch, unwatch = (
                (loop.add_reader, loop.remove_reader)
                if events == _READ
                else (loop.add_writer, loop.remove_writer)
            )
            watch(fd, wake)
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - monotonic()))
            except asyncio.TimeoutError:
                raise TimeoutError(f"no reply within {timeout:g} s") from None
            finally:
                unwatch(fd)
            events = next(steps)
    except StopIteration:
        return


def _probe_steps(pgconn: Any) -> Any:
    """A generator: yields the socket events to wait for; returns once the reply is read.

    libpq's own calls, as psycopg's generators make them (the connection is non-blocking),
    so psycopg's state is untouched: no transaction is started, the connection stays IDLE.
    """
    from psycopg import OperationalError, pq

    if pgconn.status != pq.ConnStatus.OK:
        raise OperationalError("the connection is closed")
    pgconn.send_query(b"")  # raises OperationalError when it cannot be sent
    while pgconn.flush():  # 1: more to send
        yield _WRITE
    error: str | None = None
    while True:
        pgconn.consume_input()  # raises OperationalError on a broken connection
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                if error is not None:
                    raise OperationalError(error)
                return
            if result.status not in (pq.ExecStatus.EMPTY_QUERY, pq.ExecStatus.COMMAND_OK):
                message = result.error_message or b"bad reply"
                error = bytes(message).decode("utf-8", "replace").strip()
        yield _READ
