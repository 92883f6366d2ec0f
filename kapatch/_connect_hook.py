"""The one hook on ``socket.socket.connect`` / ``connect_ex`` that socket-based adapters share.

It is installed while any enabled adapter needs it (``Adapter.needs_connect_hook``),
whether or not the ``socket`` adapter itself is enabled: the socket adapter decides
only about connections no library adapter has claimed. Neither the class nor its
instances are replaced (``type(s) is socket.socket`` stays true), and send/recv are
untouched: the data path never passes through kapatch.

A plain function, not a wrapt wrapper: both methods are C methods that
``socket.socket`` inherits from ``_socket.socket``, so there is no descriptor to get
right, and this is installed at interpreter start, where importing wrapt would cost
~75 ms. Removing it deletes the attribute again, so lookup falls through to
``_socket.socket`` exactly as before.
"""

from __future__ import annotations

import _thread
import functools  # socket imports it (through enum) before this module loads
import socket

TYPE_CHECKING = False  # typing costs ~7 ms; type checkers treat this name as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class _Listener(Protocol):
        def on_connect(self, sock: socket.socket, address: Any) -> None: ...


__all__ = ["ConnectHook"]

_METHODS = ("connect", "connect_ex")
_MISSING = object()


def _hooked(listener: _Listener, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def hook(sock: socket.socket, address: Any, /) -> Any:
        listener.on_connect(sock, address)
        return original(sock, address)

    return hook


class ConnectHook:
    def __init__(self, listener: _Listener) -> None:
        self._listener = listener
        self._saved: dict[str, object] = {}
        self._lock = _thread.allocate_lock()

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def install(self) -> None:
        with self._lock:
            if self._saved:
                return
            for method in _METHODS:
                self._saved[method] = vars(socket.socket).get(method, _MISSING)
                setattr(socket.socket, method, _hooked(self._listener, getattr(socket.socket, method)))

    def remove(self) -> None:
        with self._lock:
            for method, original in self._saved.items():
                if original is _MISSING:
                    delattr(socket.socket, method)
                else:
                    setattr(socket.socket, method, original)
            self._saved.clear()
