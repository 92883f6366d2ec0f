"""redis-py: sync and asyncio TCP connections (and so Sentinel and Cluster, built on them).

Both clients create their socket in ``Connection._connect``. The sync one sets
SO_KEEPALIVE and ``socket_keepalive_options`` before ``sock.connect``; the asyncio
one sets them on the transport's socket *after* connecting, which would overwrite
anything applied at connect time. redis-py 8 turns keepalive on by default
(30/5/3); 5.x to 7.x leave it off.

How the policy gets there, the same way for both clients: the wrapped ``_connect``
runs with ``socket_keepalive`` switched off for its duration (so redis writes no
keepalive option of its own) inside ``context.claim("redis", host, port, chosen=...)``,
so the shared connect hook applies the *redis* policy (per-adapter override, rules
matched on the host name redis knows and the IP it connects to) to the fields the
application did not choose. Afterwards the application's own values are replayed:
its chosen fields the policy left alone, and any non-keepalive entry of
``socket_keepalive_options`` (redis's own errors for invalid options stay redis's).
Where kapatch left the socket alone altogether (a skip rule, a disabled policy, a
failure, a socket the hook never saw), everything redis would have written is
replayed: the connection is then exactly what redis-py makes without kapatch.

What the application chose (``kapatch._respect`` is the rule), per field:
``socket_keepalive`` switched away from the library's default chooses ``enabled``
(``False`` chooses the timings too); each keepalive entry of
``socket_keepalive_options`` whose value differs from the library's default options
chooses its field. ``None`` and empty options are "not given" (kombu's Redis transport
passes ``socket_keepalive=None, socket_keepalive_options=None``). A user who passes
exactly redis-py 8's defaults (30/5/3) is therefore taken as using the default.
Unix-socket connections are left alone (they never call ``Connection._connect``).
Not covered: an event loop that does not connect through ``socket.socket.connect``
(uvloop): there redis's own settings stay.
"""

from __future__ import annotations

import _socket
import sys

from .._records import record
from .._respect import NOTHING, TIMINGS, fields_written, keepalive_off, option_field
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from typing import Any, ClassVar

    from ._base import Claim, Decision
    from ._context import AdapterContext

__all__ = ["RedisAdapter"]

_SYNC = "redis.connection"
_ASYNC = "redis.asyncio.connection"
_MISSING = object()


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


def _chosen(keepalive: object, options: Mapping[int, object], defaults: _Defaults) -> frozenset[str]:
    """The fields the application chose (``kapatch._respect``): library defaults and None are not."""
    chosen: frozenset[str] = NOTHING
    if keepalive is not None and bool(keepalive) != defaults.keepalive:
        chosen = frozenset({"enabled"}) if keepalive else keepalive_off(NOTHING)
    if not keepalive:
        return chosen  # redis writes no option at all with keepalive off
    if options == dict(defaults.options):
        return chosen  # exactly redis-py's defaults: taken as not given (they cannot be told apart)
    # Options given replace redis-py's defaults whole (they are not merged): every keepalive
    # entry of a dict the application passed is its choice, one equal to a default included.
    for option in options:
        field = option_field(_socket.IPPROTO_TCP, option)
        if field is not None:
            chosen |= {field}
    return chosen


def _read_settings(connection: Any, defaults: _Defaults) -> _Settings:
    keepalive = connection.socket_keepalive
    options = dict(connection.socket_keepalive_options or {})
    port = connection.port
    return _Settings(
        host=connection.host,
        port=int(port) if port is not None else None,
        keepalive=keepalive,
        options=options,
        chosen=_chosen(keepalive, options, defaults),
    )


def _is_socket(sock: object) -> bool:
    # asyncio hands out a TransportSocket, which forwards getsockopt/setsockopt.
    return isinstance(sock, _socket.socket) or type(sock).__name__ == "TransportSocket"


def _replay(sock: Any, settings: _Settings, policy_wrote: frozenset[str] | None) -> bool:
    """Write the application's keepalive settings the policy did not replace; whether any timing was.

    *policy_wrote* ``None``: kapatch left the socket alone, so everything redis-py's own
    ``_connect`` would have written (same calls, same order), its defaults included.
    """
    if not settings.keepalive:
        return False
    if policy_wrote is None or "enabled" not in policy_wrote:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
    timing = False
    for option, value in settings.options.items():
        field = option_field(_socket.IPPROTO_TCP, option)
        policy_owns = policy_wrote is not None and (field in policy_wrote or field not in settings.chosen)
        if field is not None and policy_owns:
            continue  # the policy's value, or a library default the policy replaces
        sock.setsockopt(_socket.IPPROTO_TCP, option, value)
        timing = timing or field in TIMINGS
    return timing


class RedisAdapter(Adapter):
    name: ClassVar[str] = "redis"
    pooled = True
    distribution = "redis"
    # The client modules: where the application's health_check_interval enters (_redis_pool).
    modules = (_SYNC, _ASYNC, "redis.client", "redis.asyncio.client", "redis.asyncio.cluster")
    minimum_version = (5,)
    below_version = (9,)
    socket_hooks = frozenset({"connect"})
    heartbeat_mechanism = (
        "redis-py health_check_interval, its PING (and a reconnect's handshake) bounded by heartbeat_timeout"
    )
    max_idle_mechanism = "disconnected when the pool hands out a connection idle longer (redis-py reconnects)"

    def __init__(self) -> None:
        super().__init__()
        self._defaults: dict[str, _Defaults] = {}

    def patch(self, module_name: str) -> None:
        from . import _redis_pool  # heartbeat and max_idle: imported with redis, not at start

        _redis_pool.patch_pool(self, module_name)
        if module_name not in (_SYNC, _ASYNC):
            return
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
            with context.claim(self.name, settings.host, settings.port, chosen=settings.chosen) as claim:
                sock = wrapped(*args, **kwargs)
        finally:
            instance.socket_keepalive = settings.keepalive
        self._finish(context, settings, claim, sock, sock.close)
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
            with context.claim(self.name, settings.host, settings.port, chosen=settings.chosen) as claim:
                result = await wrapped(*args, **kwargs)
        finally:
            instance.socket_keepalive = settings.keepalive
        writer: Any = getattr(instance, "_writer", None)
        if writer is not None:
            try:
                sock = writer.transport.get_extra_info("socket")
            except Exception as error:  # a foreign transport: redis's writes are lost, as with uvloop
                context.record_failure(self.name, "reading the transport's socket", error)
            else:
                self._finish(context, settings, claim, sock, writer.close)
        return result

    def _finish(
        self,
        context: AdapterContext,
        settings: _Settings,
        claim: Claim,
        sock: Any,
        close: Callable[[], object],
    ) -> None:
        """After connect: the application's values back where the policy did not write them.

        An error writing the application's own values is redis's own error (invalid
        options): the socket is closed and the error raised, as redis does.
        """
        if sock is None:
            return
        decision = claim.decisions[-1] if claim.decisions else None
        if decision is None and not _is_socket(sock):
            # A test double or a custom connection's socket-like object: nothing kapatch can
            # configure. Counted and logged once; redis's own writes follow as without kapatch.
            context.record_failure(
                self.name, "configuring a connection", TypeError(f"not a socket: {type(sock).__name__}")
            )
        wrote = self._policy_wrote(decision)
        try:
            timing = _replay(sock, settings, wrote)
        except (OSError, TypeError):
            close()  # as redis does when the user's options are invalid
            raise
        if timing and decision is not None and wrote:
            # An "auto" user timeout follows the application's own timings, now on the socket.
            context.reapply(sock, self.name, decision)

    @staticmethod
    def _policy_wrote(decision: Decision | None) -> frozenset[str] | None:
        """The fields the connect hook wrote on the socket, or ``None`` if it left it alone."""
        if decision is None or decision.action == "skip" or decision.policy is None:
            return None
        return fields_written(decision.policy) - decision.kept
