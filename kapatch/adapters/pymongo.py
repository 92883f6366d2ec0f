"""pymongo (sync and ``AsyncMongoClient``), and so motor: every connection to a MongoDB server.

pymongo creates its sockets in ``_create_connection`` / ``_async_create_connection``
(``pymongo.pool_shared`` in 4.9+; ``pymongo.pool`` before), for application and
monitor connections alike. Before ``connect`` it switches SO_KEEPALIVE on and lowers
idle/interval/count to at most 120/10/9 s: hard-coded library defaults, which no
pymongo option lets its user change. So those functions run inside
``context.claim("pymongo", host, port, chosen=frozenset())``: the shared connect hook
(the sync client's ``sock.connect``, asyncio's ``loop.sock_connect``, which calls the
socket's own ``connect``) puts the *pymongo* policy on every field, in respect mode
too. pymongo writes nothing after connecting, so the policy stays.

motor 3.x runs the sync pymongo in worker threads: covered by the sync path (the
claim and the connect happen in the same thread). Unix-domain sockets (hosts ending
in ``.sock``) are left alone. Not covered: an event loop whose ``sock_connect`` does
not call the socket's ``connect`` (uvloop): there pymongo's own values stay.
"""

from __future__ import annotations

import sys

from .._respect import NOTHING
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager
    from typing import Any, ClassVar

    from ._base import Claim

__all__ = ["PymongoAdapter"]

_SYNC = "_create_connection"
_ASYNC = "_async_create_connection"


def _destination(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, int | None]:
    # _create_connection(address, options): address is (host, port)
    address: Any = args[0] if args else kwargs.get("address")
    host, port = address
    return (str(host) if host is not None else None), (int(port) if port is not None else None)


class PymongoAdapter(Adapter):
    name: ClassVar[str] = "pymongo"
    pooled = True
    distribution = "pymongo"
    modules = ("pymongo.pool_shared", "pymongo.pool")
    minimum_version = (4,)
    below_version = (5,)
    socket_hooks = frozenset({"connect"})

    def patch(self, module_name: str) -> None:
        module = sys.modules[module_name]
        for name, wrapper in ((_SYNC, self._connect_sync), (_ASYNC, self._connect_async)):
            function = vars(module).get(name)
            # Only where it is defined: pymongo.pool re-exports pool_shared's in some versions.
            if function is not None and getattr(function, "__module__", None) == module_name:
                self.patcher.wrap(module, name, wrapper)

    def _claim_for(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AbstractContextManager[Claim] | None:
        context = self.context
        if context is None:
            return None
        try:
            host, port = _destination(args, kwargs)
        except Exception as error:  # an address kapatch cannot read: connect as without kapatch
            context.record_failure(self.name, "reading the pymongo address", error)
            return None
        # pymongo's 120/10/9 are library defaults, nobody's choice: the policy goes on every field.
        return context.claim(self.name, host, port, chosen=NOTHING)

    def _connect_sync(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        claimed = self._claim_for(args, kwargs)
        if claimed is None:
            return wrapped(*args, **kwargs)
        with claimed:
            return wrapped(*args, **kwargs)

    async def _connect_async(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        claimed = self._claim_for(args, kwargs)
        if claimed is None:
            return await wrapped(*args, **kwargs)
        with claimed:
            return await wrapped(*args, **kwargs)
