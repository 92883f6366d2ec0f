"""urllib3 1.26 and 2.x, and so requests (and botocore, pip, ... which build on it).

Every urllib3 connection opens its socket in ``HTTPConnection._new_conn``: plain,
HTTPS (``HTTPSConnection.connect`` calls it too), proxied (the connection's host is
then the proxy) and CONNECT-tunnelled ones alike, in 1.26 and 2.x. It connects
through ``socket.socket.connect`` (``urllib3.util.connection.create_connection``),
so this adapter only *claims* that connect: the shared connect hook then applies
the urllib3 policy, with per-destination rules matched against the host name
urllib3 dials, not only the IP.

Why not ``HTTPConnection.default_socket_options``: urllib3 2.x binds it as a default
argument when the class is created (reassigning it does nothing), and proxied pools
pass ``socket_options=[]``, so options set there would miss those connections.

Respect mode: ``socket_options`` the application gave (``PoolManager(socket_options=...)``,
requests-toolbelt's ``TCPKeepAliveAdapter``, ...) are set by urllib3 on the socket
*before* it connects. Any keepalive entry among them (SO_KEEPALIVE, even ``0``,
TCP_KEEPIDLE/INTVL/CNT, TCP_USER_TIMEOUT) is the application's choice and is kept.
Without such an entry the kernel's SO_KEEPALIVE state decides, as for a bare socket.

SOCKS (``urllib3.contrib.socks``, requests' ``socks5://`` proxies): ``SOCKSConnection``
overrides ``_new_conn`` without calling it, and PySocks connects to the proxy through
``socket.socket.connect`` as well, so its ``_new_conn`` is claimed too, with the SOCKS
proxy as the host dialled.

``max_idle``: a pooled connection idle longer than that is closed when the pool hands it
out, instead of being sent a request (a NAT box or load balancer may have forgotten the
flow, silently: the request would hang). The moment a connection goes back to the pool
(``HTTPConnectionPool._put_conn``) gives its deadline; the check is urllib3's own
"was it dropped?" test at hand-out (``is_connection_dropped``, called by ``_get_conn``
for every reused connection, in 1.26 and 2.x), which then says yes: urllib3 closes the
connection and opens a new one exactly as for one the server closed (1.26's tunnelled
connections included). urllib3 has no idle limit of its own, so there is nothing of the
application's to respect; these hooks go on only when some policy sets ``max_idle``.
urllib3 has no application-level check either: ``heartbeat`` is not carried.
"""

from __future__ import annotations

import sys
import time

from .._respect import chosen_in_options
from ._base import Adapter
from ._idle import max_idle_s, wants_max_idle

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, ClassVar

__all__ = ["Urllib3Adapter"]


def chosen_fields(socket_options: Iterable[Any] | None) -> frozenset[str] | None:
    """The keepalive fields *socket_options* (urllib3's list of setsockopt triples) chooses.

    ``None`` when it chooses none: then the runtime reads the socket when it connects
    (someone else may have configured it), as for any bare socket.
    """
    return chosen_in_options(socket_options) or None


def _endpoint(host: object, port: object) -> tuple[str | None, int | None]:
    """``(host, port)`` for a claim; IPv6 brackets dropped, anything unexpected ``None``."""
    return (
        host.strip("[]") if isinstance(host, str) and host else None,
        port if isinstance(port, int) and not isinstance(port, bool) else None,
    )


def _http_endpoint(connection: Any) -> tuple[str | None, int | None]:
    # For a proxied connection (forwarding or CONNECT tunnel) urllib3 has already made
    # the proxy the connection's host: the socket goes there.
    return _endpoint(connection.host, connection.port)


def _socks_endpoint(connection: Any) -> tuple[str | None, int | None]:
    options = connection._socks_options
    return _endpoint(options["proxy_host"], options["proxy_port"])


_ENDPOINTS: dict[str, tuple[str, Callable[[Any], tuple[str | None, int | None]]]] = {
    # module -> (class whose _new_conn opens the socket, where it connects)
    "urllib3.connection": ("HTTPConnection", _http_endpoint),
    "urllib3.contrib.socks": ("SOCKSConnection", _socks_endpoint),
}
_POOL_MODULE = "urllib3.connectionpool"
_DEADLINE = "_kapatch_idle_deadline"  # on a pooled connection: monotonic time it may be reused until
_MAX_IDLE = "_kapatch_max_idle"  # on a pool: (adapter, seconds or None), decided once per pool


class Urllib3Adapter(Adapter):
    name: ClassVar[str] = "urllib3"
    pooled = True
    distribution = "urllib3"
    modules = (*_ENDPOINTS, _POOL_MODULE)
    minimum_version = (1, 26)
    below_version = (3,)
    socket_hooks = frozenset({"connect"})
    max_idle_mechanism = (
        "closed at hand-out from the pool (HTTPConnectionPool._get_conn), urllib3 opens a new one"
    )

    def patch(self, module_name: str) -> None:
        if module_name == _POOL_MODULE:
            self._patch_pool(sys.modules[module_name])
            return
        class_name, endpoint = _ENDPOINTS[module_name]
        connection_class = getattr(sys.modules[module_name], class_name)

        def claim_new_conn(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            context = self.context
            if context is None:  # disabled between lookup and call
                return wrapped(*args, **kwargs)
            try:
                host, port = endpoint(instance)
                chosen = chosen_fields(getattr(instance, "socket_options", None))
            except Exception as error:  # an unknown connection subclass: connect unclaimed
                context.record_failure(self.name, f"reading {class_name}'s destination", error)
                return wrapped(*args, **kwargs)
            with context.claim(self.name, host, port, chosen=chosen):
                return wrapped(*args, **kwargs)

        self.patcher.wrap(connection_class, "_new_conn", claim_new_conn)

    # -- max_idle ------------------------------------------------------------------
    # Both hooks run on every request while some policy sets max_idle: plain functions
    # (``wrap_function``), not wrapt wrappers, which cost ~3 times as much per call here.
    def _patch_pool(self, pool_module: Any) -> None:
        context = self.context
        if context is None or not wants_max_idle(context, self.name):
            return
        self.patcher.wrap_function(pool_module.HTTPConnectionPool, "_put_conn", self._put_conn)
        self.patcher.wrap_function(pool_module, "is_connection_dropped", self._is_connection_dropped)

    def _put_conn(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # _put_conn(pool, conn): the connection is idle from now; its deadline, before the
        # pool can hand it out again.
        try:
            if len(args) == 2:
                pool, conn = args
            else:
                pool, conn = args[0], kwargs.get("conn")
            if conn is not None:
                cached = getattr(pool, _MAX_IDLE, None)
                limit = cached[1] if cached is not None and cached[0] is self else self._pool_max_idle(pool)
                setattr(conn, _DEADLINE, None if limit is None else time.monotonic() + limit)
        except Exception as error:  # an unknown pool or connection: returned without a deadline
            context = self.context
            if context is not None:
                context.record_failure(self.name, "noting when a connection went idle", error)
        return wrapped(*args, **kwargs)

    def _pool_max_idle(self, pool: Any) -> float | None:
        """Decided once per pool (one destination each), then cached on it for this install."""
        context = self.context
        limit = None if context is None else max_idle_s(context, self.name, pool.host, pool.port)
        setattr(pool, _MAX_IDLE, (self, limit))
        return limit

    def _is_connection_dropped(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            deadline = getattr(args[0] if args else kwargs.get("conn"), _DEADLINE, None)
            if deadline is not None and time.monotonic() > deadline:
                setattr(args[0] if args else kwargs.get("conn"), _DEADLINE, None)
                context = self.context
                if context is not None:
                    context.count_pool(self.name, "evicted")
                return True  # urllib3 closes it and connects again, as for a dropped one
        except Exception as error:
            context = self.context
            if context is not None:
                context.record_failure(self.name, "checking a pooled connection's idle time", error)
        return wrapped(*args, **kwargs)
