"""What the stdlib connect hook applies in its own frame: a decision published by the runtime.

Every connection made through ``socket.socket.connect`` passes the hook. The runtime
decides once per adapter configuration and respect-mode mask (the fields the application
set on the socket) and publishes the outcome as a :data:`Table` in a cell the hook holds:
for each mask, the options as ``(level, option, value)`` triples, the ledger's note, the
tally to count on and what to do if the kernel refuses a write; ``None`` where the
decision needs the runtime (rules by destination, fields the application kept, ioctls).
The hook checks for TCP, looks the entry up, notes, writes and counts without another
Python call: the call into the runtime and its lookups cost ~4% of a loopback connect
(issue 13's benchmark). No table yet, a library adapter's claim open, a socket read
that fails, a mask not decided yet: the hook calls ``on_connect``, which decides.
"""

from __future__ import annotations

import _thread

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    import itertools
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from ._ledger import Note

__all__ = ["OPEN_CLAIMS", "Entry", "Table", "Writes", "claim_closed", "claim_opened"]

Writes: TypeAlias = "tuple[tuple[int, int, int], ...]"
"""``(level, option, value)`` for each ``setsockopt``."""

Entry: TypeAlias = "tuple[Writes, Note, itertools.count[int], Callable[[Any], None]]"
"""(writes, the ledger's note, the tally, what to do when the kernel refuses a write)."""

Table: TypeAlias = "tuple[Callable[[Any], int] | None, list[Entry | None], dict[int, Any]]"
"""(the respect-mode read or ``None`` in override mode, an :data:`Entry` by mask, the ledger)."""

OPEN_CLAIMS = [0]
"""Library adapters' claims open in any thread or task. While it is 0 no context holds one,
and the hook skips the context variable's lookup (~400 instructions per connection)."""

_lock = _thread.allocate_lock()  # += on a list item is three steps: a thread switch can split it


def claim_opened() -> None:
    with _lock:
        OPEN_CLAIMS[0] += 1


def claim_closed() -> None:
    with _lock:
        OPEN_CLAIMS[0] -= 1
