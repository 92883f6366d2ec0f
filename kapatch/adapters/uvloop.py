"""uvloop: TCP connections and listeners that libuv opens in C.

uvloop's loop creates its sockets and connects (and listens) them in libuv, so
``socket.socket.connect`` / ``listen`` are never called. This adapter wraps
``uvloop.Loop.create_connection`` (``uvloop.Loop`` is a Python subclass of the Cython
loop: every loop uvloop makes, and subclasses of it) so that, right after it returns
and before the caller holds the transport, the transport's socket (a ``PseudoSocket``
that supports ``getsockopt`` / ``setsockopt``) goes through
``context.on_connect(sock, peername, default_adapter="uvloop")``: a library claim in
the same task context (redis.asyncio, httpx/anyio) still decides, and what is already
on the socket is read first, so explicit options still win in respect mode. That covers
``asyncio.open_connection``, redis.asyncio, asyncpg, anyio's ``connect_tcp`` (httpx)
on every way of getting a uvloop loop: ``uvloop.run``, ``uvloop.install()``,
``asyncio.run(..., loop_factory=uvloop.new_event_loop)``, uvicorn's loop set-up.

``create_server`` (and so ``asyncio.start_server``): each of ``server.sockets`` goes
through ``context.on_listen`` (the inbound policy when it is on) as soon as
``create_server`` returns; the kernel copies it to every connection whose handshake
completes afterwards (libuv has already listened by then: a connection accepted in that
instant keeps the kernel defaults).

Left to other paths: ``create_connection(sock=...)`` (the application connected that
socket itself, through ``socket.socket.connect``, which the shared hook sees),
``sock_connect`` (uvloop calls ``sock.connect``: the shared hook), Unix sockets.
Not covered: the first bytes of a TLS handshake made inside ``create_connection`` are
sent before the options go on (keepalive matters only once the connection idles).
"""

from __future__ import annotations

import sys

from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any, ClassVar

__all__ = ["UvloopAdapter"]


class UvloopAdapter(Adapter):
    name: ClassVar[str] = "uvloop"
    distribution = "uvloop"
    modules = ("uvloop",)
    minimum_version = (0, 17)
    below_version = (1,)

    def patch(self, module_name: str) -> None:
        loop = sys.modules[module_name].Loop
        self.patcher.wrap(loop, "create_connection", self._create_connection)
        self.patcher.wrap(loop, "create_server", self._create_server)

    async def _create_connection(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # wrapt returns whatever the wrapper returns: here the coroutine the caller awaits.
        result = await wrapped(*args, **kwargs)
        context = self.context
        if context is not None and kwargs.get("sock") is None:
            try:
                transport = result[0]
                sock = transport.get_extra_info("socket")
                peer = transport.get_extra_info("peername")
            except Exception as error:
                context.record_failure(self.name, "finding the connected socket", error)
            else:
                if sock is not None:
                    context.on_connect(sock, peer, default_adapter=self.name)  # never raises
        return result

    async def _create_server(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        server = await wrapped(*args, **kwargs)
        context = self.context
        if context is not None:
            try:
                sockets = tuple(server.sockets or ())
            except Exception as error:
                context.record_failure(self.name, "finding the listening sockets", error)
            else:
                for sock in sockets:
                    context.on_listen(sock)  # never raises
        return server
