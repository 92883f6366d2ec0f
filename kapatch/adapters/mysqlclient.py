"""mysqlclient (``MySQLdb``; and so Django's mysql backend, SQLAlchemy ``mysql+mysqldb``):
the policy on the connection's socket, right after it connects.

libmysqlclient / libmariadb creates and connects its socket in C and takes no keepalive
parameters (it turns SO_KEEPALIVE on itself, with the kernel's timings). The socket is
reachable once connected: ``conn.fileno()``. So this adapter wraps
``MySQLdb.connections.Connection.__init__`` (``MySQLdb.connect`` and ``Connect`` build a
``Connection``; subclasses inherit the wrap) and, when it returns, before the
application holds the connection, configures that socket through a duplicate of its
descriptor (``kapatch._fdsocket``). The destination the rules see is the socket's peer
address and port, with the ``host`` the application passed as its name.

Respect mode: the library's SO_KEEPALIVE is a library default, not a choice, and
mysqlclient has no keepalive option an application could pass, so nothing on this
socket was chosen by the application when kapatch sees it; what the application sets
on ``conn.fileno()`` afterwards is its own and wins, as it is written last.

Left alone, not counted: Unix-socket connections (for MySQL ``host="localhost"`` means
the Unix socket) and named pipes. Not covered: the few queries ``Connection.__init__``
itself runs right after connecting (character set, autocommit) go out before the
policy is on; a connection that reconnects by itself (``MYSQL_OPT_RECONNECT``, removed in
recent clients) gets a new socket kapatch does not see.
"""

from __future__ import annotations

from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

__all__ = ["MysqlclientAdapter"]

_NOTHING: frozenset[str] = frozenset()


class MysqlclientAdapter(Adapter):
    name: ClassVar[str] = "mysqlclient"
    distribution = "mysqlclient"
    modules = ("MySQLdb.connections",)
    minimum_version = (2, 1)
    below_version = (3,)

    def patch(self, module_name: str) -> None:
        from MySQLdb import connections

        self.patcher.wrap(connections.Connection, "__init__", self._wrap_init)

    def _wrap_init(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)  # the application's own errors propagate unchanged
        context = self.context
        if context is None:
            return result
        try:
            from .._fdsocket import configure_fd

            host = kwargs.get("host", args[0] if args else None)
            configure_fd(
                context,
                instance.fileno(),
                self.name,
                host=host if isinstance(host, str) and host else None,
                chosen=_NOTHING,  # libmariadb's SO_KEEPALIVE is a library default (see above)
            )
        except Exception as error:  # never stop the application from connecting
            context.record_failure(self.name, "configuring the connection's socket", error)
        return result
