"""gevent: connections (and listeners) made through gevent's cooperative socket class.

gevent's ``socket`` (``gevent._socket3.socket``) is not a subclass of the stdlib
``socket.socket``: it holds a ``_socket.socket`` and connects it with the C
``connect_ex`` in a wait loop, so the shared stdlib hook never sees it. This adapter
wraps ``connect`` / ``connect_ex`` / ``listen`` where gevent defines them
(``gevent._socketcommon.SocketMixin``, which gevent's class and its ``SSLSocket``
inherit) so that each calls ``context.on_connect(sock, address, default_adapter="gevent")``
(or ``on_listen``) before the original. A library adapter's claim in the current
greenlet (urllib3, redis, httpx) therefore decides as it does without gevent; a socket
nobody claimed gets the ``gevent`` adapter's policy. Options go on before the connect
starts, so cooperative connects (non-blocking, EINPROGRESS, then a wait) are untouched.

Either order works: gevent's module is patched when it is imported, whether
``gevent.monkey.patch_all()`` runs before or after kapatch installs (the stdlib hook
finds the original class through ``gevent.monkey.saved``). Not covered: gevent's
``socket`` objects made with ``fileno=`` of a socket connected elsewhere (nothing
connects through gevent then), and libraries that connect in C under gevent.
"""

from __future__ import annotations

import sys

from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

__all__ = ["GeventAdapter"]

_MODULE = "gevent._socketcommon"


class GeventAdapter(Adapter):
    name: ClassVar[str] = "gevent"
    distribution = "gevent"
    modules = (_MODULE,)
    minimum_version = (21,)
    below_version = (27,)

    def patch(self, module_name: str) -> None:
        mixin = sys.modules[module_name].SocketMixin
        self.patcher.wrap(mixin, "connect", self._connect)
        self.patcher.wrap(mixin, "connect_ex", self._connect)
        self.patcher.wrap(mixin, "listen", self._listen)

    def _connect(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = self.context
        # Only a well-formed call is seen; anything else is gevent's to reject.
        if context is not None and instance is not None and len(args) == 1 and not kwargs:
            context.on_connect(instance, args[0], default_adapter=self.name)  # never raises
        return wrapped(*args, **kwargs)

    def _listen(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = self.context
        if context is not None and instance is not None:
            context.on_listen(instance)  # never raises; the inbound policy when it is on
        return wrapped(*args, **kwargs)
