"""httpx (through httpcore): the sync, anyio (asyncio) and trio backends' ``connect_tcp``.

httpcore connects through the stdlib (``socket.create_connection``, or asyncio/trio
sockets), so the shared connect hook sees every socket; but it writes the
application's ``socket_options`` *after* connecting, over whatever was set at connect
time. So ``connect_tcp`` runs inside a claim that knows which keepalive fields those
options choose: in respect mode the policy goes only on the other fields (the
application's then land on top, as it asked); in override mode the policy is put back
after httpcore wrote the application's options, so the policy wins as promised.

``max_idle`` maps onto httpcore's own ``keepalive_expiry`` (httpx's
``Limits(keepalive_expiry=...)``): an idle connection past it is expired by the pool when
it next assigns requests, and a new one is opened; nothing is added to the request path.
It is set per new connection (``ConnectionPool.create_connection``, which gives each
connection the pool's value), so per-destination rules apply. max_idle only ever
*shortens*: the connection gets min(the pool's keepalive_expiry, max_idle). A longer
max_idle never lengthens the library's expiry (httpx's default is 5 s; connections then
already leave before max_idle, which is all max_idle asks). Respect mode: a
keepalive_expiry the application chose is kept as it is; httpx's default 5 s (what
``httpx.Limits`` gives when not told otherwise, so indistinguishable from writing 5.0)
and bare httpcore's default (never) are not choices. Override mode: min(chosen, max_idle).
``evicted`` counts idle connections closed after the expiry kapatch set (whether the pool
closed them at the next request or when the client closed). httpcore has no
application-level check of its own: ``heartbeat`` is not carried.
"""

from __future__ import annotations

import sys
import time

from .._respect import chosen_in_options
from ..policy import Mode
from ._base import Adapter
from ._idle import max_idle_s, wants_max_idle

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any, ClassVar

    from ._base import Claim
    from ._context import AdapterContext

__all__ = ["HttpxAdapter"]

_BACKENDS = {
    "httpcore._backends.sync": "SyncBackend",
    "httpcore._backends.anyio": "AnyIOBackend",
    "httpcore._backends.trio": "TrioBackend",
}
# max_idle: the pools (keepalive_expiry per new connection) and the connections (counting).
_POOLS = {
    "httpcore._sync.connection_pool": "ConnectionPool",
    "httpcore._async.connection_pool": "AsyncConnectionPool",
}
_CONNECTIONS = {
    "httpcore._sync.http11": ("HTTP11Connection", "close"),
    "httpcore._sync.http2": ("HTTP2Connection", "close"),
    "httpcore._async.http11": ("AsyncHTTP11Connection", "aclose"),
    "httpcore._async.http2": ("AsyncHTTP2Connection", "aclose"),
}
_HTTPX_DEFAULT_EXPIRY = 5.0  # httpx.Limits' default keepalive_expiry: a library default, not a choice
_CHOSEN = "_kapatch_keepalive_chosen"  # on a pool: the application chose its keepalive_expiry


class _MaxIdle(float):
    """A keepalive_expiry kapatch set: the connection carries it, so its close can be counted."""

    __slots__ = ()


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    # connect_tcp(host, port, timeout=None, local_address=None, socket_options=None)
    host = args[0] if args else kwargs.get("host")
    port = args[1] if len(args) > 1 else kwargs.get("port")
    options = args[4] if len(args) > 4 else kwargs.get("socket_options")
    return host, port, options


class HttpxAdapter(Adapter):
    name: ClassVar[str] = "httpx"
    pooled = True
    distribution = "httpcore"
    modules = (*_BACKENDS, *_POOLS, *_CONNECTIONS)
    minimum_version = (0, 17)
    below_version = (2,)
    socket_hooks = frozenset({"connect"})
    max_idle_mechanism = (
        "httpcore keepalive_expiry lowered to max_idle per new connection "
        "(only shortens; respect mode keeps an explicit keepalive_expiry)"
    )

    def patch(self, module_name: str) -> None:
        if module_name in _POOLS or module_name in _CONNECTIONS:
            self._patch_for_max_idle(module_name)
            return
        backend = getattr(sys.modules[module_name], _BACKENDS[module_name])
        if module_name == "httpcore._backends.sync":
            self.patcher.wrap(backend, "connect_tcp", self._connect_sync)
        else:
            self.patcher.wrap(backend, "connect_tcp", self._connect_async)

    def _connect_sync(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = self.context
        if context is None:
            return wrapped(*args, **kwargs)
        host, port, options = _arguments(args, kwargs)
        chosen = chosen_in_options(options)
        with context.claim(self.name, host, port, chosen=chosen) as claim:
            stream = wrapped(*args, **kwargs)
        self._after_connect(context, claim, stream, chosen)
        return stream

    async def _connect_async(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # wrapt returns whatever the wrapper returns: here the coroutine the caller awaits.
        context = self.context
        if context is None:
            return await wrapped(*args, **kwargs)
        host, port, options = _arguments(args, kwargs)
        chosen = chosen_in_options(options)
        with context.claim(self.name, host, port, chosen=chosen) as claim:
            stream = await wrapped(*args, **kwargs)
        self._after_connect(context, claim, stream, chosen)
        return stream

    def _after_connect(
        self, context: AdapterContext, claim: Claim, stream: Any, chosen: frozenset[str]
    ) -> None:
        decision = claim.applied
        if not chosen or decision is None:
            return  # nothing of the application's was written over the policy
        try:
            sock = stream.get_extra_info("socket")
        except Exception as error:
            context.record_failure(self.name, "finding the connected socket", error)
            return
        if sock is not None:
            # Respect mode: only the fields the application did not choose (theirs stay);
            # override mode: every field, over what httpcore just wrote.
            context.reapply(sock, self.name, decision)

    # -- max_idle ------------------------------------------------------------------
    def _patch_for_max_idle(self, module_name: str) -> None:
        context = self.context
        if context is None or not wants_max_idle(context, self.name):
            return  # no policy sets max_idle: httpcore's pools stay exactly as they are
        module = sys.modules[module_name]
        if module_name in _POOLS:
            pool = getattr(module, _POOLS[module_name])
            self.patcher.wrap(pool, "__init__", self._pool_init)
            self.patcher.wrap(pool, "create_connection", self._create_connection)
        else:
            class_name, close = _CONNECTIONS[module_name]
            self.patcher.wrap(getattr(module, class_name), close, self._close)

    def _pool_init(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        try:
            # httpx always passes keepalive_expiry (its Limits'); bare httpcore may not. Its
            # position differs between httpcore versions: read from the signature.
            code = wrapped.__code__
            names = code.co_varnames[1 : code.co_argcount]  # without self
            given = "keepalive_expiry" in kwargs or (
                "keepalive_expiry" in names and len(args) > names.index("keepalive_expiry")
            )
            value = getattr(instance, "_keepalive_expiry", None)
            setattr(instance, _CHOSEN, given and value != _HTTPX_DEFAULT_EXPIRY)
        except Exception as error:
            context = self.context
            if context is not None:
                context.record_failure(self.name, "reading the pool's keepalive_expiry", error)
        return result

    def _create_connection(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            expiry = self._expiry_for(instance, args[0] if args else kwargs.get("origin"))
        except Exception as error:  # an unknown pool or origin: the pool's own expiry
            context = self.context
            if context is not None:
                context.record_failure(self.name, "choosing a connection's keepalive_expiry", error)
            expiry = None
        if expiry is None:
            return wrapped(*args, **kwargs)
        # create_connection hands the pool's _keepalive_expiry to the new connection (for
        # every connection class: direct, proxied, SOCKS); it runs under the pool's lock
        # and does no I/O, so the value is this connection's alone.
        saved = instance._keepalive_expiry
        instance._keepalive_expiry = expiry
        try:
            return wrapped(*args, **kwargs)
        finally:
            instance._keepalive_expiry = saved

    def _expiry_for(self, pool: Any, origin: Any) -> _MaxIdle | None:
        """The keepalive_expiry for a new connection to *origin*; ``None``: the pool's own."""
        context = self.context
        if context is None:
            return None
        host = origin.host.decode("ascii") if isinstance(origin.host, bytes) else origin.host
        limit = max_idle_s(context, self.name, host, origin.port)
        if limit is None:
            return None
        if getattr(pool, _CHOSEN, False) and context.config_for(self.name).mode is Mode.RESPECT:
            return None  # the application's keepalive_expiry wins
        current = pool._keepalive_expiry
        if current is not None and current <= limit:
            return None  # already at most max_idle: max_idle never lengthens it
        return _MaxIdle(limit)

    def _close(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # Counted when called (for aclose: before the coroutine runs), while the state is intact.
        try:
            if isinstance(getattr(instance, "_keepalive_expiry", None), _MaxIdle):
                expire_at = getattr(instance, "_expire_at", None)  # set only while idle
                if expire_at is not None and time.monotonic() > expire_at:
                    context = self.context
                    if context is not None:
                        context.count_pool(self.name, "evicted")
        except Exception as error:
            context = self.context
            if context is not None:
                context.record_failure(self.name, "counting an expired connection", error)
        return wrapped(*args, **kwargs)
