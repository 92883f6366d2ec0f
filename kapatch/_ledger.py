"""Which adapter configured which socket: a note per file descriptor, for ``kapatch.audit``.

The runtime notes once per connection it decides: one ``fileno()``, one weak reference, one
dict store, and the (adapter, action, kept) tuple made once per decision, not per socket
(the connect hook writes the entry itself, as :func:`note_made` does). The dict is keyed
by fd, so it is bounded by the number of descriptors the process ever held at once, and an
entry is overwritten when its fd is reused by a socket kapatch sees. An entry is
**advisory**: a socket kapatch never saw may reuse the fd of one it configured, so the
audit's verdict comes from the kernel's values, and the ledger only says who configured a
socket and what it kept on purpose.
"""

from __future__ import annotations

import _weakref  # the C module: weakref.py is not worth its import at interpreter start

from ._records import record

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import Any, TypeAlias

__all__ = ["LedgerEntry", "lookup", "note", "note_made"]

Note: TypeAlias = "tuple[str, str, frozenset[str]]"
"""(adapter, action, kept): made once per decision, shared by every socket it is noted for."""

_ENTRIES: dict[int, tuple[Any, Note]] = {}


@record
class LedgerEntry:
    adapter: str
    action: str
    """``apply``, ``respect`` or ``skip`` (the runtime's decision)."""
    kept: frozenset[str]
    """Fields the application chose, left as they were (respect mode)."""


def note(sock: Any, adapter: str, action: str, kept: frozenset[str]) -> None:
    """Record the decision for *sock*'s descriptor; a socket-like without one is skipped."""
    note_made(sock, (adapter, action, kept))


def note_made(sock: Any, made: Note, _ref: Any = _weakref.ref) -> None:
    """:func:`note` with the (adapter, action, kept) tuple made already (the connect hook's).

    A weak reference to the socket object comes along where it allows one, so that
    :func:`lookup` can tell a note about a socket since closed (its fd reused by another
    socket) from one about the socket that now holds the fd.
    """
    try:
        fd = sock.fileno()
        owner = _ref(sock)
    except TypeError:  # no weak references (some socket-likes): an unchecked note
        owner = None
    except Exception:  # a socket-like object kapatch cannot read: nothing to note
        return
    if isinstance(fd, int) and fd >= 0:
        _ENTRIES[fd] = (owner, made)


def lookup(fd: int) -> LedgerEntry | None:
    found = _ENTRIES.get(fd)
    if found is None:
        return None
    owner, (adapter, action, kept) = found
    if owner is not None:
        sock = owner()
        try:
            current = sock.fileno() if sock is not None else -1
        except Exception:
            current = -1
        if current != fd:  # closed since: the fd now belongs to a socket kapatch may never have seen
            _ENTRIES.pop(fd, None)
            return None
    return LedgerEntry(adapter, action, kept)
