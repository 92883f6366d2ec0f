"""The one hook on ``socket.socket.connect`` / ``connect_ex`` that socket-based adapters share.

It is installed while any enabled adapter needs it (``Adapter.needs_connect_hook``),
whether or not the ``socket`` adapter itself is enabled: the socket adapter decides
only about connections no library adapter has claimed. Neither the class nor its
instances are replaced (``type(s) is socket.socket`` stays true), and send/recv are
untouched: the data path never passes through kapatch.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from ._patching import Patcher

__all__ = ["ConnectHook"]


class _Listener(Protocol):
    def on_connect(self, sock: socket.socket, address: Any) -> None: ...


class ConnectHook:
    def __init__(self, listener: _Listener) -> None:
        self._listener = listener
        self._patcher = Patcher()

    def _before_connect(
        self,
        wrapped: Callable[..., Any],
        instance: socket.socket,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        self._listener.on_connect(instance, args[0] if args else kwargs.get("address"))
        return wrapped(*args, **kwargs)

    @property
    def installed(self) -> bool:
        return bool(self._patcher)

    def install(self) -> None:
        for method in ("connect", "connect_ex"):
            self._patcher.wrap(socket.socket, method, self._before_connect)

    def remove(self) -> None:
        self._patcher.restore()
