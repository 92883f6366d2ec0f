"""Configure the socket behind a file descriptor a C library owns (mysqlclient's ``fileno()``).

A socket object is made on a *duplicate* of the descriptor: options set through it land
on the same kernel socket (a dup shares the open file description), and closing it
closes only the duplicate, never the library's descriptor. Imported on first use, not
at interpreter start (it imports ``socket``).
"""

from __future__ import annotations

import os
import socket

from .rules import Destination

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from .adapters._base import Decision
    from .adapters._context import AdapterContext

__all__ = ["configure_fd"]

_INET = (socket.AF_INET, getattr(socket, "AF_INET6", socket.AF_INET))


def configure_fd(
    context: AdapterContext,
    fd: int,
    adapter: str,
    *,
    host: str | None = None,
    chosen: frozenset[str] | None = None,
) -> Decision | None:
    """Decide and apply *adapter*'s policy to the connected TCP socket on *fd*; counts it.

    ``None`` (nothing done, not counted) when *fd* is not a connected TCP socket: a Unix
    socket, or a descriptor already closed. The destination is the socket's peer; *host*
    is the name the application gave, for rules by name. Never raises.
    """
    try:
        duplicate = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if duplicate.family not in _INET or duplicate.type != socket.SOCK_STREAM:
            return None
        try:
            peer = duplicate.getpeername()
        except OSError:
            return None  # not connected
        address, port = str(peer[0]), int(peer[1])
        destination = Destination(host=host or address, address=address, port=port)
        return context.configure_socket(duplicate, adapter, destination, chosen=chosen)
    except Exception as error:  # configure_socket never raises; this guards the reads above
        context.record_failure(adapter, "configuring a socket by its descriptor", error)
        return None
    finally:
        duplicate.close()
