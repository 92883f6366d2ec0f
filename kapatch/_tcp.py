"""Whether a socket is one kapatch may touch: a TCP socket (AF_INET or AF_INET6, SOCK_STREAM).

Its own module, on ``_socket`` alone, so that the connect hook can check each socket
without :mod:`kapatch.sockopts` (plans, platforms) being imported at interpreter start.
"""

from __future__ import annotations

import _socket  # the C module: socket.py's constants without its ~5 ms (enum) at start

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import Any

__all__ = ["TCP_FAMILIES", "not_tcp_reason", "raw_family", "raw_type"]

TCP_FAMILIES = tuple(
    family for family in (getattr(_socket, "AF_INET", None), getattr(_socket, "AF_INET6", None))
    if family is not None
)  # fmt: skip

# The C getters: a stdlib socket's family and type as ints, without socket.py's enum
# conversion (and right even where a subclass overrides the properties).
raw_family = _socket.socket.family.__get__
raw_type = _socket.socket.type.__get__


def not_tcp_reason(sock: Any) -> str | None:
    """Why *sock* is not a TCP socket kapatch may touch, or ``None`` when it is."""
    if isinstance(sock, _socket.socket):
        family, kind = raw_family(sock), raw_type(sock)
    else:  # asyncio's TransportSocket and other socket-likes
        family, kind = sock.family, sock.type
    if family not in TCP_FAMILIES:
        return f"not TCP: family {sock.family!s}"
    if kind != _socket.SOCK_STREAM:
        return f"not TCP: type {sock.type!s}"
    return None
