"""redis-py pooled connections: ``heartbeat`` and ``max_idle`` (the redis adapter's pool half).

heartbeat -> redis-py's own ``health_check_interval``: before a command on a connection
idle longer than that, redis-py sends PING and wants PONG. kapatch sets it where the
application's arguments enter (``Redis()``, ``redis.asyncio.Redis()``, the asyncio
``RedisCluster()``, and any ``ConnectionPool``, which ``from_url``, Sentinel and the sync
Cluster's per-node clients build) when the application gave none (respect mode; an
explicit value, 0 included, wins) or always (override mode). The value is a
:class:`_Heartbeat`, a float carrying ``heartbeat_timeout`` too, so each connection knows
it is kapatch's and how long its proof may take, without a lookup per command.

The proof's reply deadline: redis-py reads PONG with the connection's ``socket_timeout``,
None by default, so a frozen server (SIGSTOP: its kernel still ACKs) would block the PING
forever. On kapatch's connections the reads of ``_send_ping`` are bounded by
``heartbeat_timeout`` (the socket's timeout, or the asyncio connection's
``socket_timeout``, set around it and put back). redis-py's Retry then reconnects, and a
fresh connection to a frozen server connects fine (the kernel's backlog accepts): its
handshake reads (``on_connect``) are bounded the same way, and one that made no read at
all (no auth, no lib-name) gets a health check before its first command. So every read of
a kapatch-heartbeat connection that follows a silent interval, or a reconnect, has a
deadline; the data path itself is untouched.

max_idle: redis-py (5.0 to 8.x) has no idle eviction of its own. ``release`` stamps the
time on the connection; when a pool hands it out again (``connect()``, which every pool
calls on the connection it hands out), one idle longer than ``max_idle`` is disconnected
first and redis-py reconnects. Installed only when ``max_idle`` is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time

from .._patching import through
from ..policy import Mode
from ..rules import Destination

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

    from .redis import RedisAdapter

__all__ = ["ASYNC", "CLIENTS", "SYNC", "patch_pool"]

SYNC = "redis.connection"
ASYNC = "redis.asyncio.connection"
CLIENTS = {
    "redis.client": ("Redis",),
    "redis.asyncio.client": ("Redis",),
    "redis.asyncio.cluster": ("RedisCluster",),  # builds its nodes' connections without a pool
}
_HCI = "health_check_interval"
_PINGING: contextvars.ContextVar[object] = contextvars.ContextVar("kapatch_redis_pinging", default=None)


class _Heartbeat(float):
    """``health_check_interval`` set by kapatch: the seconds, and the PING's reply deadline."""

    timeout: float

    def __new__(cls, seconds: float, timeout: float) -> _Heartbeat:
        value = super().__new__(cls, seconds)
        value.timeout = timeout
        return value

    def __reduce__(self) -> tuple[Any, ...]:  # deepcopy / pickle (Cluster copies kwargs)
        return (_Heartbeat, (float(self), self.timeout))

    def __repr__(self) -> str:
        return repr(float(self))


def _bounded(current: float | None, deadline: float) -> float:
    return deadline if current is None or current <= 0 else min(current, deadline)


def _ours(connection: Any) -> _Heartbeat | None:
    value = getattr(connection, _HCI, None)
    return value if isinstance(value, _Heartbeat) else None


def patch_pool(adapter: RedisAdapter, module_name: str) -> None:
    """Install this module's heartbeat hooks (always) and max_idle hooks (when it is set)."""
    module = sys.modules[module_name]
    patcher = adapter.patcher
    if module_name in CLIENTS:  # where the application's arguments enter
        for class_name in CLIENTS[module_name]:
            cls = getattr(module, class_name)
            patcher.wrap(cls, "__init__", _Hooks(adapter).client_init(cls))
        return
    hooks = _SyncHooks(adapter) if module_name == SYNC else _AsyncHooks(adapter)
    patcher.wrap(module.ConnectionPool, "__init__", hooks.pool_init)
    base = module.AbstractConnection
    patcher.wrap(base, "_send_ping", hooks.send_ping)
    patcher.wrap(base, "_ping_failed", hooks.ping_failed)
    # redis-py >= 6 connects through on_connect_check_health (on_connect calls it); 5.x: on_connect.
    handshake = "on_connect_check_health" if "on_connect_check_health" in vars(base) else "on_connect"
    patcher.wrap(base, handshake, hooks.on_connect)
    context = adapter.context
    max_idle = context.config_for(adapter.name).policy.max_idle_s if context is not None else None
    if max_idle is not None:
        # Both run around every command (the pool's hand-out and hand-back): closures with
        # redis-py's own parameters, not wrappers (see release_hook).
        hooks.max_idle = max_idle
        for pool in (module.ConnectionPool, module.BlockingConnectionPool):
            patcher.replace_function(pool, "release", hooks.release_hook)
        patcher.replace_function(base, "connect", hooks.connect_hook)


class _Hooks:
    def __init__(self, adapter: RedisAdapter) -> None:
        self.adapter = adapter
        self.max_idle: float | None = None

    # -- deciding health_check_interval ---------------------------------------
    def heartbeat_for(self, host: object, port: object, given: bool) -> _Heartbeat | None:
        """kapatch's value for a client or pool to *host*:*port*, or ``None`` to leave it."""
        context = self.adapter.context
        if context is None:
            return None
        if given and context.config_for(self.adapter.name).mode is Mode.RESPECT:
            return None
        destination = Destination(
            host=host if isinstance(host, str) else None, port=port if isinstance(port, int) else None
        )
        decision = context.policy_for(self.adapter.name, destination)
        policy = decision.policy
        if decision.action == "skip" or policy is None or policy.heartbeat_s is None:
            return None
        return _Heartbeat(policy.heartbeat_s, policy.heartbeat_timeout_s)

    def client_init(self, cls: Any) -> Callable[..., Any]:
        names = _parameter_names(cls)
        index = names.index(_HCI) if _HCI in names else None

        def wrapper(
            wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            try:
                bound = dict(zip(names, args, strict=False))
                bound.update(kwargs)
                if bound.get("connection_pool") is None and bound.get("unix_socket_path") is None:
                    given = _HCI in bound
                    value = self.heartbeat_for(bound.get("host", "localhost"), bound.get("port", 6379), given)
                    if value is not None:
                        if index is not None and index < len(args):
                            args = (*args[:index], value, *args[index + 1 :])
                        else:
                            kwargs = {**kwargs, _HCI: value}
            except Exception as error:
                self.failed("choosing health_check_interval", error)
            return wrapped(*args, **kwargs)

        return wrapper

    def pool_init(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        try:
            connection_kwargs = instance.connection_kwargs
            current = connection_kwargs.get(_HCI)
            if not isinstance(current, _Heartbeat) and "path" not in connection_kwargs:  # not a unix socket
                value = self.heartbeat_for(
                    connection_kwargs.get("host"), connection_kwargs.get("port"), _HCI in connection_kwargs
                )
                if value is not None:
                    connection_kwargs[_HCI] = value
        except Exception as error:
            self.failed("choosing health_check_interval", error)
        return result

    # -- counting ------------------------------------------------------------
    def count(self, event: str) -> None:
        context = self.adapter.context
        if context is not None:
            context.count_pool(self.adapter.name, event)

    def failed(self, what: str, error: BaseException) -> None:
        context = self.adapter.context
        if context is not None:
            context.record_failure(self.adapter.name, what, error)

    def ping_failed(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _ours(instance) is not None:
            self.count("replaced")  # redis-py disconnects it; its Retry connects a fresh one
        return wrapped(*args, **kwargs)

    # -- max_idle --------------------------------------------------------------
    # Where redis-py's method has the parameters kapatch knows (5.0 to 8.x: ``release(self,
    # connection)``, ``connect(self)``), the hook is a closure with those same parameters: no
    # argument tuple or dict to build and spread again, no generic wrapper call. Each runs
    # once per command: this took the pair from +4.1 to ~+0.6 us per command. Any other signature
    # gets the generic hook, which passes every argument through.
    def release_hook(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``pool.release(connection)``: stamp the time the pool took the connection back."""
        if not _takes_exactly(original, ("self", "connection")):
            return through(self.release, original)
        monotonic = time.monotonic

        def release(pool: Any, connection: Any) -> Any:
            _stamp(connection, monotonic())
            return original(pool, connection)

        return release

    def connect_hook(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``connection.connect()``, which every pool calls on what it hands out: evict if idle too long."""
        if not _takes_exactly(original, ("self",)):
            return through(self.connect, original)
        hooks, monotonic = self, time.monotonic

        def connect(connection: Any) -> Any:
            released = _take_stamp(connection)
            if released is not None:
                limit = hooks.max_idle
                if limit is not None and monotonic() - released > limit:
                    return hooks.evict_then(connection, lambda: original(connection))
            return original(connection)

        return connect

    def release(
        self, wrapped: Callable[..., Any], _: None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The generic ``release`` hook: args are (pool, connection)."""
        _stamp(args[1] if len(args) > 1 else kwargs.get("connection"), time.monotonic())
        return wrapped(*args, **kwargs)

    def connect(
        self, wrapped: Callable[..., Any], _: None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The generic ``connect`` hook: args[0] is the connection (none: connect() rejects the call)."""
        released = _take_stamp(args[0]) if args else None
        if released is not None and self.max_idle is not None and time.monotonic() - released > self.max_idle:
            return self.evict_then(args[0], lambda: wrapped(*args, **kwargs))
        return wrapped(*args, **kwargs)

    def evict_then(self, connection: Any, connect: Callable[[], Any]) -> Any:
        """Disconnect *connection*, idle longer than max_idle, then *connect* (redis-py's own)."""
        raise NotImplementedError


def _stamp(connection: Any, now: float) -> None:
    """Note when a pool took *connection* back (read by :func:`_take_stamp` at its next hand-out)."""
    try:  # noqa: SIM105 - contextlib.suppress is three calls more, at every hand-back
        connection._kapatch_released = now
    except Exception:  # a foreign connection object: never evicted
        pass


def _take_stamp(connection: Any) -> float | None:
    """When a pool last took *connection* back, or ``None``; consumed either way (read once per hand-out)."""
    try:
        released: float | None = connection._kapatch_released
    except Exception:  # never released yet (a fresh connection), or a foreign object
        return None
    if released is not None:
        connection._kapatch_released = None
    return released


def _takes_exactly(function: Callable[..., Any], names: tuple[str, ...]) -> bool:
    """Whether *function* is a Python function whose parameters are *names* exactly: positional
    or keyword, no defaults, no ``*args``/``**kwargs``, so a closure with the same parameters
    accepts every call it accepts (and rejects the rest with the same message)."""
    code = getattr(function, "__code__", None)
    return (
        code is not None
        and code.co_varnames[: code.co_argcount] == names
        and not (code.co_posonlyargcount or code.co_kwonlyargcount)
        and not code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS)
        and not getattr(function, "__defaults__", None)
    )


_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08  # inspect.CO_VARARGS/CO_VARKEYWORDS, without inspect


def _parameter_names(cls: Any) -> list[str]:
    import inspect

    return list(inspect.signature(cls.__init__).parameters)[1:]


def _hold_health_check(connection: Any) -> None:
    """No health check inside the handshake: its reads are bounded already (and redis-py 5's
    handshake would PING through a reconnect inside the PING's own retry, again and again)."""
    connection.next_health_check = math.inf


def _release_health_check(connection: Any) -> None:
    """Any reply moved ``next_health_check``; a handshake that read nothing (no auth, no
    lib-name) proved nothing: health check before the first command."""
    if connection.next_health_check == math.inf:
        connection.next_health_check = 0


class _SyncHooks(_Hooks):
    def send_ping(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        heartbeat = _ours(instance)
        if heartbeat is None:
            return wrapped(*args, **kwargs)
        self.count("heartbeats_sent")
        try:
            sock = instance._sock
            original = sock.gettimeout() if sock is not None else None
            if sock is not None:
                sock.settimeout(_bounded(original, heartbeat.timeout))
        except Exception as error:  # an unexpected connection class: redis-py's own PING, unbounded
            self.failed("bounding the health check's PING", error)
            return wrapped(*args, **kwargs)
        token = _PINGING.set(instance)  # a reconnect inside keeps the deadline until PONG
        try:
            return wrapped(*args, **kwargs)
        except Exception:
            self.count("heartbeats_failed")
            raise
        finally:
            _PINGING.reset(token)
            now = instance._sock
            # Put back what redis-py gave the socket (a fresh one: the connection's socket_timeout),
            # unless this PING ran inside another (redis-py 5's handshake checks health itself).
            if now is not None and _PINGING.get() is not instance:
                with contextlib.suppress(OSError):
                    now.settimeout(original if now is sock else instance.socket_timeout)

    def on_connect(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        heartbeat = _ours(instance)
        sock = getattr(instance, "_sock", None) if heartbeat is not None else None
        if heartbeat is None or sock is None:
            return wrapped(*args, **kwargs)
        try:
            original = sock.gettimeout()
            sock.settimeout(_bounded(original, heartbeat.timeout))
        except Exception as error:  # an unexpected socket object: redis-py's own handshake
            self.failed("bounding the handshake", error)
            return wrapped(*args, **kwargs)
        _hold_health_check(instance)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _release_health_check(instance)
            if instance._sock is sock and _PINGING.get() is not instance:
                with contextlib.suppress(OSError):
                    sock.settimeout(original)

    def evict_then(self, connection: Any, connect: Callable[[], Any]) -> Any:
        if connection._sock is not None:
            connection.disconnect()
            self.count("evicted")
        return connect()


class _AsyncHooks(_Hooks):
    async def _bounded_call(
        self, heartbeat: _Heartbeat, instance: Any, call: Coroutine[Any, Any, Any], ping: bool
    ) -> Any:
        original = instance.socket_timeout
        instance.socket_timeout = _bounded(original, heartbeat.timeout)
        try:
            return await call
        except Exception:
            if ping:
                self.count("heartbeats_failed")
            raise
        finally:
            instance.socket_timeout = original

    def send_ping(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        heartbeat = _ours(instance)
        if heartbeat is None:
            return wrapped(*args, **kwargs)
        self.count("heartbeats_sent")
        return self._bounded_call(heartbeat, instance, wrapped(*args, **kwargs), ping=True)

    def on_connect(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        heartbeat = _ours(instance)
        if heartbeat is None:
            return wrapped(*args, **kwargs)
        _hold_health_check(instance)
        return self._handshake(heartbeat, instance, wrapped(*args, **kwargs))

    async def _handshake(self, heartbeat: _Heartbeat, instance: Any, call: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await self._bounded_call(heartbeat, instance, call, ping=False)
        finally:
            _release_health_check(instance)

    async def evict_then(self, connection: Any, connect: Callable[[], Any]) -> Any:
        if getattr(connection, "is_connected", False):
            await connection.disconnect()
            self.count("evicted")
        return await connect()
