"""Raw sockets: ``socket.socket.connect`` and ``connect_ex``.

This one hook covers ``socket.create_connection``, asyncio's selector loop (which
connects through ``sock.connect``) and every pure-Python client. Library adapters
claim their sockets (``runtime.claim``) and this hook applies *their* policy, so two
adapters never fight over one socket. Neither the class nor its instances are
replaced: ``type(s) is socket.socket`` stays true, and send/recv are untouched.

Not covered: sockets connected in C (libpq, uvloop/libuv) and gevent's socket class,
which does not inherit from the stdlib one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, ClassVar

from .. import runtime
from ._base import Adapter

__all__ = ["SocketAdapter"]


def _before_connect(
    wrapped: Callable[..., Any], instance: socket.socket, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    address = args[0] if args else kwargs.get("address")
    runtime.context().on_connect(instance, address)
    return wrapped(*args, **kwargs)


class SocketAdapter(Adapter):
    """Every outbound TCP connection made through the stdlib ``socket`` module."""

    name: ClassVar[str] = "socket"
    distribution = None
    modules = ("socket",)

    def patch(self, module_name: str) -> None:
        for method in ("connect", "connect_ex"):
            self.patcher.wrap(socket.socket, method, _before_connect)
