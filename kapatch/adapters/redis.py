"""redis-py: sync and asyncio TCP connections (and so Sentinel and Cluster, built on them).

Both clients create their socket in ``Connection._connect``. The sync one sets
SO_KEEPALIVE and ``socket_keepalive_options`` before ``sock.connect``; the asyncio
one sets them on the transport's socket *after* connecting, which would overwrite
anything applied at connect time. redis-py 8 turns keepalive on by default
(30/5/3); 5.x to 7.x leave it off.

How the policy gets there, the same way for both clients: the wrapped ``_connect``
runs with ``socket_keepalive`` switched off for its duration (so redis writes no
keepalive option of its own) inside ``context.claim("redis", host, port)``, so the
shared connect hook applies the *redis* policy (per-adapter override, rules matched
on the host name redis knows and the IP it connects to) when the socket connects.
Afterwards, if kapatch left the socket alone (a skip rule, a disabled policy, an
explicit user setting in respect mode, or a failure), SO_KEEPALIVE is still off and
redis's own keepalive writes are replayed with its own values: the connection is
then exactly what redis-py would have made without kapatch.

"Explicit" is read from the connection's attributes: keepalive switched away from
the library's default, or options that differ from the library's default options.
A user who passes exactly redis-py 8's defaults (30/5/3) is therefore taken as
using the default. Unix-socket connections are left alone (they never call
``Connection._connect``). Not covered: an event loop that does not connect through
``socket.socket.connect`` (uvloop): there redis's own settings stay.
"""

from __future__ import annotations

import _socket
import sys

from .._records import record
from .._respect import ALL_FIELDS, NOTHING
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from typing import Any, ClassVar

    from ._context import AdapterContext

__all__ = ["RedisAdapter"]

_SYNC = "redis.connection"
_ASYNC = "redis.asyncio.connection"


@record
class _Defaults:
    """What redis-py does when the application says nothing, read from the installed version."""

    keepalive: bool
    options: Mapping[int, object]


@record
class _Settings:
    """One connection's keepalive settings, read just before it connects."""

    host: str | None
    port: int | None
    keepalive: object
    options: Mapping[int, object]
    chosen: frozenset[str]


def _library_defaults(module: Any) -> _Defaults:
    import inspect  # only once redis is imported: inspect is heavy for interpreter start
    from collections.abc import Mapping

    parameters = inspect.signature(module.Connection.__init__).parameters
    keepalive = parameters["socket_keepalive"].default
    options = parameters["socket_keepalive_options"].default
    if options is None or options is inspect.Parameter.empty:
        resolved: Mapping[int, object] = {}
    elif isinstance(options, Mapping):
        resolved = dict(options)
    else:  # redis-py 8: a SENTINEL object meaning "get_default_socket_keepalive_options()"
        resolved = dict(module.get_default_socket_keepalive_options())
    return _Defaults(keepalive=bool(keepalive), options=resolved)


def _read_settings(connection: Any, defaults: _Defaults) -> _Settings:
    keepalive = connection.socket_keepalive
    options = dict(connection.socket_keepalive_options or {})
    # None is what older clients pass for "not given" (redis.Redis in 5.x-7.x): not a choice.
    switched = keepalive is not None and bool(keepalive) != defaults.keepalive
    port = connection.port
    return _Settings(
        host=connection.host,
        port=int(port) if port is not None else None,
        keepalive=keepalive,
        options=options,
        chosen=ALL_FIELDS if switched or options != dict(defaults.options) else NOTHING,
    )


def _keepalive_on(sock: Any) -> bool:
    return bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE))


def _replay_redis_options(sock: Any, settings: _Settings) -> None:
    """What redis-py's own ``_connect`` would have written (same calls, same order)."""
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
    for option, value in settings.options.items():
        sock.setsockopt(_socket.IPPROTO_TCP, option, value)


class RedisAdapter(Adapter):
    name: ClassVar[str] = "redis"
    distribution = "redis"
    modules = (_SYNC, _ASYNC)
    minimum_version = (5,)
    below_version = (9,)
    socket_hooks = frozenset({"connect"})

    def __init__(self) -> None:
        super().__init__()
        self._defaults: dict[str, _Defaults] = {}

    def patch(self, module_name: str) -> None:
        module = sys.modules[module_name]
        self._defaults[module_name] = _library_defaults(module)
        if module_name == _SYNC:
            self.patcher.wrap(module.Connection, "_connect", self._connect_sync)
        elif module_name == _ASYNC:
            self.patcher.wrap(module.Connection, "_connect", self._connect_async)

    def disable(self) -> None:
        super().disable()
        self._defaults.clear()

    # -- the wrappers --------------------------------------------------------
    def _prepare(self, module_name: str, connection: Any) -> tuple[AdapterContext, _Settings] | None:
        """Read the connection's settings and switch redis's own keepalive writes off, or ``None``.

        The caller must put ``socket_keepalive`` back (``settings.keepalive``) when connected.
        """
        context, defaults = self.context, self._defaults.get(module_name)
        if context is None or defaults is None:
            return None
        try:
            settings = _read_settings(connection, defaults)
            # redis writes no keepalive option of its own during _connect: the connect hook
            # configures the socket instead (the asyncio client would otherwise set redis's
            # options on the transport's socket after connecting, over the policy).
            connection.socket_keepalive = False
        except Exception as error:  # an unexpected subclass: connect as if kapatch were absent
            context.record_failure(self.name, "reading redis connection settings", error)
            return None
        return context, settings

    def _connect_sync(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        prepared = self._prepare(_SYNC, instance)
        if prepared is None:
            return wrapped(*args, **kwargs)
        context, settings = prepared
        try:
            with context.claim(self.name, settings.host, settings.port, chosen=settings.chosen):
                sock = wrapped(*args, **kwargs)
        finally:
            instance.socket_keepalive = settings.keepalive
        self._replay_if_left_alone(context, settings, sock, sock.close)
        return sock

    async def _connect_async(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # wrapt returns whatever the wrapper returns: here the coroutine the caller awaits.
        prepared = self._prepare(_ASYNC, instance)
        if prepared is None:
            return await wrapped(*args, **kwargs)
        context, settings = prepared
        try:
            with context.claim(self.name, settings.host, settings.port, chosen=settings.chosen):
                result = await wrapped(*args, **kwargs)
        finally:
            instance.socket_keepalive = settings.keepalive
        writer: Any = getattr(instance, "_writer", None)
        if writer is not None:
            sock = writer.transport.get_extra_info("socket")
            self._replay_if_left_alone(context, settings, sock, writer.close)
        return result

    def _replay_if_left_alone(
        self, context: AdapterContext, settings: _Settings, sock: Any, close: Callable[[], object]
    ) -> None:
        """Where kapatch left *sock* alone, write what redis-py itself would have written."""
        if not settings.keepalive or sock is None or self._configured(context, sock):
            return
        try:
            _replay_redis_options(sock, settings)
        except (OSError, TypeError):
            close()  # as redis does when the user's options are invalid
            raise

    def _configured(self, context: AdapterContext, sock: Any) -> bool:
        """Whether the connect hook put the policy on *sock* (it always switches SO_KEEPALIVE on)."""
        try:
            return _keepalive_on(sock)
        except OSError as error:
            context.record_failure(self.name, "reading SO_KEEPALIVE back", error)
            return True  # nothing sane to replay onto a socket that cannot be read
