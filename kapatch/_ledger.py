"""Which adapter configured which socket: a note per file descriptor, for ``kapatch.audit``.

The runtime calls :func:`note` once per connection it decides (one ``fileno()`` and one
dict store). The dict is keyed by fd, so it is bounded by the number of descriptors the
process ever held at once, and an entry is overwritten when its fd is reused by a socket
kapatch sees. An entry is **advisory**: a socket kapatch never saw may reuse the fd of one
it configured, so the audit's verdict comes from the kernel's values, and the ledger only
says who configured a socket and what it kept on purpose.
"""

from __future__ import annotations

from ._records import record

__all__ = ["LedgerEntry", "lookup", "note"]

_ENTRIES: dict[int, tuple[str, str, frozenset[str]]] = {}


@record
class LedgerEntry:
    adapter: str
    action: str
    """``apply``, ``respect`` or ``skip`` (the runtime's decision)."""
    kept: frozenset[str]
    """Fields the application chose, left as they were (respect mode)."""


def note(fd: int, adapter: str, action: str, kept: frozenset[str]) -> None:
    _ENTRIES[fd] = (adapter, action, kept)


def lookup(fd: int) -> LedgerEntry | None:
    found = _ENTRIES.get(fd)
    return None if found is None else LedgerEntry(*found)
