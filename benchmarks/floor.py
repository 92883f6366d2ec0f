"""The floor: the least any Python-level connect hook does, written by hand (no kapatch).

Issue 13 asks for kapatch's hook within 5% of the options written by hand. Writing by hand
happens inside the application's own code; a hook that needs no change to that code runs
in a Python function of its own around the C ``connect()``, must tell a TCP socket from
the rest (UDP ``connect()``, AF_UNIX, vsock...), and then writes. :func:`floor_hook` is
exactly that and nothing more: what any such hook pays before it decides, notes or counts
anything. Set against the by-hand writes, it bounds what a Python hook can reach; set
against kapatch, it leaves what kapatch's own features cost. :func:`noted` and
:func:`counted` add, one at a time, what kapatch keeps per connection (the ledger's note
for ``kapatch audit``, the count for ``kapatch status``), so that callgrind can name the
remaining instructions piece by piece (``benchmarks.callgrind``).
"""

from __future__ import annotations

import _socket
import _weakref
import itertools
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# The balanced profile's five writes, as kapatch applies them (override mode).
BALANCED = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 110_000),
)
_NATIVE = _socket.socket
_STREAM = _socket.SOCK_STREAM
_TCP_FAMILIES = (_socket.AF_INET, _socket.AF_INET6)
# The C getters (socket.py's properties convert to enums, which costs far more).
_raw_type = _socket.socket.type.__get__
_raw_family = _socket.socket.family.__get__


def floor_hook(sock: Any, address: object) -> None:
    """The TCP check and the five writes: no decision, no note, no count."""
    if isinstance(sock, _NATIVE) and _raw_type(sock) == _STREAM and _raw_family(sock) in _TCP_FAMILIES:
        for level, option, value in BALANCED:
            sock.setsockopt(level, option, value)


_NOTES: dict[int, tuple[object, object]] = {}
_NOTE = object()


def noted(sock: Any, address: object) -> None:
    """:func:`floor_hook` plus a note per connection: fd -> (weak reference, what was written)."""
    if isinstance(sock, _NATIVE) and _raw_type(sock) == _STREAM and _raw_family(sock) in _TCP_FAMILIES:
        _NOTES[sock.fileno()] = (_weakref.ref(sock), _NOTE)
        for level, option, value in BALANCED:
            sock.setsockopt(level, option, value)


_TALLIES = {"configured": itertools.count()}


def counted(sock: Any, address: object) -> None:
    """:func:`noted` plus a count, as kapatch keeps it: ``next()`` on an ``itertools.count`` (no
    thread can split it, so no lock)."""
    if isinstance(sock, _NATIVE) and _raw_type(sock) == _STREAM and _raw_family(sock) in _TCP_FAMILIES:
        _NOTES[sock.fileno()] = (_weakref.ref(sock), _NOTE)
        for level, option, value in BALANCED:
            sock.setsockopt(level, option, value)
        next(_TALLIES["configured"])


@contextmanager
def installed(hook: Callable[[Any, object], None] = floor_hook) -> Iterator[None]:
    """*hook* (:func:`floor_hook`, or :func:`noted`, :func:`counted`) around
    ``socket.socket.connect``, in a plain function, as kapatch's is."""
    original = _socket.socket.connect

    def connect(sock: Any, address: Any) -> Any:
        hook(sock, address)
        return original(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        del socket.socket.connect  # lookup falls through to _socket.socket's again
