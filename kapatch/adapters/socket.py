"""Raw sockets: every outbound TCP connection made through the stdlib ``socket`` module.

Covers ``socket.socket.connect``/``connect_ex``, ``socket.create_connection``,
asyncio's selector loop (which connects through ``sock.connect``) and every
pure-Python client, through the shared connect hook (``kapatch/_connect_hook.py``).
This adapter decides for connections that no library adapter claimed.

Other paths have adapters of their own: gevent's socket class (not a stdlib subclass:
``gevent``), uvloop's loop (libuv connects in C: ``uvloop``), and C clients (``psycopg``,
``psycopg2``, ``mysqlclient``, ``grpc``).
"""

from __future__ import annotations

from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import ClassVar

__all__ = ["SocketAdapter"]


class SocketAdapter(Adapter):
    name: ClassVar[str] = "socket"
    distribution = None
    modules = ()
    socket_hooks = frozenset({"connect"})

    def patch(self, module_name: str) -> None:
        """Nothing of its own to patch: the runtime installs the shared connect hook."""
