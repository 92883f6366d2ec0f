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

Not covered: ``urllib3.contrib.socks.SOCKSConnection`` overrides ``_new_conn`` (PySocks).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ._base import Adapter

__all__ = ["Urllib3Adapter"]

_SOL_TCP = getattr(socket, "IPPROTO_TCP", 6)


def _keepalive_options() -> frozenset[tuple[int, int]]:
    """(level, option) pairs that configure keepalive on this platform."""
    found = {(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    # TCP_KEEPALIVE is macOS's name for the idle time; TCP_USER_TIMEOUT is Linux only.
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"):
        option = getattr(socket, name, None)
        if option is not None:
            found.add((_SOL_TCP, option))
    return frozenset(found)


_KEEPALIVE_OPTIONS = _keepalive_options()


def explicit_keepalive(socket_options: Iterable[Any] | None) -> bool | None:
    """``True`` when *socket_options* (urllib3's list of setsockopt triples) sets keepalive.

    ``None`` otherwise: then the runtime reads SO_KEEPALIVE from the socket when it
    connects (someone else may have turned it on), as for any bare socket.
    """
    for entry in socket_options or ():
        try:
            level, option = int(entry[0]), int(entry[1])
        except (TypeError, ValueError, IndexError):
            continue  # urllib3 itself will complain about a malformed entry
        if (level, option) in _KEEPALIVE_OPTIONS:
            return True
    return None


def _dialled_host(connection: Any) -> str | None:
    """The host this connection connects to (the proxy, when proxied), without IPv6 brackets."""
    host = getattr(connection, "host", None)
    if not isinstance(host, str) or not host:
        return None
    return host.strip("[]")


class Urllib3Adapter(Adapter):
    name: ClassVar[str] = "urllib3"
    distribution = "urllib3"
    modules = ("urllib3.connection",)
    minimum_version = (1, 26)
    below_version = (3,)
    needs_connect_hook = True

    def patch(self, module_name: str) -> None:
        module = sys.modules[module_name]
        self.patcher.wrap(module.HTTPConnection, "_new_conn", self._claim_new_conn)

    def _claim_new_conn(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        context = self.context
        if context is None:  # disabled between lookup and call
            return wrapped(*args, **kwargs)
        try:
            host = _dialled_host(instance)
            port = instance.port if isinstance(getattr(instance, "port", None), int) else None
            explicit = explicit_keepalive(getattr(instance, "socket_options", None))
        except Exception as error:  # a connection class we do not know: connect unclaimed
            context.record_failure(self.name, "reading the connection's host", error)
            return wrapped(*args, **kwargs)
        with context.claim(self.name, host, port, explicit=explicit):
            return wrapped(*args, **kwargs)
