"""Which entries of a library's ``socket_options`` list configure keepalive (shared by adapters)."""

from __future__ import annotations

import _socket  # the C module: the same constants without socket.py's ~5 ms at start

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = ["KEEPALIVE_OPTIONS", "sets_keepalive"]


def _keepalive_options() -> frozenset[tuple[int, int]]:
    found = {(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE)}
    tcp = getattr(_socket, "IPPROTO_TCP", 6)
    # TCP_KEEPALIVE is macOS's name for the idle time; TCP_USER_TIMEOUT is Linux only.
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"):
        option = getattr(_socket, name, None)
        if option is not None:
            found.add((tcp, option))
    return frozenset(found)


KEEPALIVE_OPTIONS = _keepalive_options()
"""(level, option) pairs that configure keepalive on this platform."""


def sets_keepalive(socket_options: Iterable[Any] | None) -> bool:
    """Whether a list of ``(level, option, value)`` triples sets any keepalive option.

    ``SO_KEEPALIVE=0`` counts: turning keepalive off is an explicit choice too.
    """
    for entry in socket_options or ():
        try:
            level, option = int(entry[0]), int(entry[1])
        except (TypeError, ValueError, IndexError):
            continue  # the library itself will complain about a malformed entry
        if (level, option) in KEEPALIVE_OPTIONS:
            return True
    return False
