"""The shared hooks on the stdlib ``socket.socket``: ``connect``/``connect_ex``, and ``listen``.

Installed while any enabled adapter asks for them (``Adapter.socket_hooks``), whether
or not the ``socket`` adapter itself is enabled: the socket adapter decides only about
connections no library adapter has claimed. Neither the class nor its instances are
replaced (``type(s) is socket.socket`` stays true), and send/recv are untouched: the
data path never passes through kapatch.

Plain functions, not wrapt wrappers: these are C methods that ``socket.socket``
inherits from ``_socket.socket``, so there is no descriptor to get right, and this is
installed at interpreter start, where importing wrapt would cost ~75 ms. Removing a
hook deletes the attribute again, so lookup falls through to ``_socket.socket``
exactly as before.

Safe against what a host program does around it:

* Arguments pass through untouched, so a wrong call fails with the stdlib's own
  ``TypeError``; an object that is not a socket is the stdlib's to reject.
* Something that wraps ``socket.socket.connect`` after kapatch is left in place by
  :meth:`SocketHooks.remove` (kapatch's hook under it turns into a pass-through), and
  the log says so.
* A fork while another thread installs or removes the hooks: the child gets a fresh
  lock and the hooks exactly as that thread meant them to be (all or none).
"""

from __future__ import annotations

import _socket
import _thread
import _weakref  # the C module: weakref.py is not worth its import at interpreter start
import functools  # socket imports it (through enum) before this module loads
import os
import sys

from . import _log
from ._fast_path import OPEN_CLAIMS
from ._first_use import MISSING as _MISSING
from ._first_use import hand_over, take_over
from ._tcp import TCP_FAMILIES, raw_family, raw_type

TYPE_CHECKING = False  # typing costs ~7 ms; type checkers treat this name as True
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterable
    from typing import Any, Protocol

    from ._fast_path import Table

    class _Listener(Protocol):
        def on_connect(self, sock: Any, address: Any, *, default_adapter: str = ...) -> None: ...
        def on_listen(self, sock: Any) -> None: ...
        def table_cell(self, adapter: str) -> list[Table | None]: ...
        def record_failure(self, adapter: str, what: str, error: BaseException) -> None: ...


__all__ = ["HOOKED_METHODS", "SocketHooks", "stdlib_socket_class"]

HOOKED_METHODS = {"connect": ("connect", "connect_ex"), "listen": ("listen",)}
"""Hook name (``Adapter.socket_hooks``) -> the ``socket.socket`` methods it covers."""

ADAPTER = "socket"
"""The adapter that decides for the stdlib class's connections no library adapter claimed."""


def stdlib_socket_class() -> type[socket.socket]:
    """The stdlib's ``socket.socket``, even after ``gevent.monkey`` replaced the module's name."""
    module = sys.modules["socket"]
    found = module.socket
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        original = getattr(monkey, "saved", {}).get("socket", {}).get("socket")
        if original is not None:  # the stdlib class, which patch_all() replaced
            found = original
    if not (isinstance(found, type) and issubclass(found, _socket.socket)):
        found = vars(module).get("SocketType", found)  # pragma: no cover - no known case
    return found  # type: ignore[no-any-return]


class _Hook:
    """One installed method, then the original; inert once removed. ``listen`` calls the
    listener; ``connect`` applies the listener's published table itself and calls it for the
    rest (see _fast_path)."""

    __slots__ = ("active", "function", "saved")

    def __init__(self, method: str, saved: object, original: Callable[..., Any], listener: _Listener) -> None:
        self.active = True
        self.saved = saved  # what the class's own __dict__ held: put back on removal
        self.function = self._make(method, original, listener)
        self.function.__kapatch_hook__ = self  # type: ignore[attr-defined]  # found again after a fork

    def _make(self, method: str, original: Callable[..., Any], listener: _Listener) -> Callable[..., Any]:
        state = self
        if method == "listen":

            @functools.wraps(original)
            def listen(sock: Any, *args: Any, **kwargs: Any) -> Any:
                if state.active and isinstance(sock, _socket.socket):
                    listener.on_listen(sock)
                return original(sock, *args, **kwargs)

            return listen

        # Bound once, as locals of the closure: this runs for every connection.
        on_connect, record_failure = listener.on_connect, listener.record_failure
        cell = listener.table_cell(ADAPTER)
        socket_class, stream, weakref = _socket.socket, _socket.SOCK_STREAM, _weakref.ref

        @functools.wraps(original)
        def connect(sock: Any, address: Any = _MISSING, /, *args: Any, **kwargs: Any) -> Any:  # noqa: PLR0912
            # Every connection's path, written out in one function on purpose. The one-address
            # call goes straight through (no argument tuple to build); anything else is the
            # stdlib's to reject, with its own message, and is not seen.
            if args or kwargs or address is _MISSING:
                return original(sock, *(() if address is _MISSING else (address,)), *args, **kwargs)
            if not (state.active and isinstance(sock, socket_class)):
                return original(sock, address)
            # The runtime's published decision, applied in this frame (see _fast_path);
            # anything it does not cover is the runtime's to decide.
            table = cell[0]
            if table is None or OPEN_CLAIMS[0]:
                on_connect(sock, address)
                return original(sock, address)
            try:
                if raw_type(sock) == stream and raw_family(sock) in TCP_FAMILIES:
                    read, entries, ledger = table
                    try:
                        entry = entries[0 if read is None else read(sock)]
                    except OSError:  # closed under us, or not really TCP: the runtime says so
                        entry = None
                    if entry is None:
                        on_connect(sock, address)
                    else:
                        writes, note, tally, refused = entry
                        fd = sock.fileno()
                        if fd >= 0:  # the ledger's note (kapatch.audit), as _ledger.note_made makes it
                            try:
                                ledger[fd] = (weakref(sock), note)
                            except TypeError:  # a bare _socket.socket takes no weak reference
                                ledger[fd] = (None, note)
                        try:
                            # sock.setsockopt each time, not bound once: a bound METH_VARARGS
                            # builtin has no vectorcall, so each call through it builds its
                            # tuple the slow way (+680 instructions per connection).
                            for level, option, value in writes:
                                sock.setsockopt(level, option, value)
                        except OSError:
                            refused(sock)
                        else:
                            next(tally)  # atomic under the GIL: no lock (one cost ~1.6k instructions)
            except Exception as error:  # the connect goes on regardless
                record_failure(ADAPTER, "connect hook", error)
            return original(sock, address)

        return connect


class SocketHooks:
    def __init__(self, listener: _Listener) -> None:
        self._listener = listener
        self._installed: dict[str, _Hook] = {}
        self._wanted: frozenset[str] = frozenset()  # methods the last call meant to have hooked
        self._lock = _thread.allocate_lock()
        self._owner: type[socket.socket] | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    @property
    def installed(self) -> frozenset[str]:
        """The hook names (``connect``, ``listen``) in place."""
        return frozenset(name for name, methods in HOOKED_METHODS.items() if methods[0] in self._installed)

    def install(self, names: Iterable[str]) -> None:
        """Hook the methods of *names* (and unhook those no longer asked for)."""
        wanted = frozenset(method for name in names for method in HOOKED_METHODS[name])
        with self._lock:
            self._wanted = wanted
            self._sync()

    def remove(self) -> None:
        with self._lock:
            self._wanted = frozenset()
            self._sync()

    def _sync(self) -> None:
        """Make the class's methods match ``_wanted``; the lock is held (or this is a fresh child)."""
        if self._owner is None:
            self._owner = stdlib_socket_class()
        owner = self._owner
        for method in sorted(set(self._installed) - self._wanted):
            hook = self._installed[method]
            hook.active = False  # inert even where something else still calls it
            if vars(owner).get(method, _MISSING) is not hook.function:
                _log.warning(
                    "kapatch: socket.socket.%s was replaced after kapatch hooked it; leaving the "
                    "replacement in place (kapatch's hook under it now does nothing)",
                    method,
                )
            else:
                _restore(owner, method, hook.saved)
            del self._installed[method]
        for method in sorted(self._wanted - set(self._installed)):
            saved, original, stand_in = take_over(owner, method)  # a start's stand-in: replaced
            hook = _Hook(method, saved, original, self._listener)
            self._installed[method] = hook
            hand_over(owner, method, hook.function, stand_in)

    def _after_fork_in_child(self) -> None:
        # The forking thread may have interrupted another one inside install()/remove():
        # its lock would never be released here, and the class could be half-hooked.
        self._lock = _thread.allocate_lock()
        owner = self._owner
        if owner is None:
            return
        for methods in HOOKED_METHODS.values():
            for method in methods:
                hook = getattr(vars(owner).get(method), "__kapatch_hook__", None)
                recorded = self._installed.get(method)
                if recorded is not None and recorded is not hook:
                    del self._installed[method]  # recorded, but not yet on the class
                if hook is not None and recorded is not hook:
                    _restore(owner, method, hook.saved)  # on the class, but no longer recorded
        self._sync()


def _restore(owner: type, method: str, saved: object) -> None:
    if saved is _MISSING:
        delattr(owner, method)
    else:
        setattr(owner, method, saved)
