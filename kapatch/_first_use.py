"""Stand-ins that finish a deferred start at the first use of what they stand in for.

An enabled start reads the configuration at once and installs the runtime (the connect
path and the adapters: ~8M instructions, about a third of what kapatch adds to a program
that imports asyncio) when the program first imports a module an adapter patches. Nearly
every program imports ``socket`` and many import ``asyncio`` without ever making a TCP
connection (a management command, a health check, a subprocess that inherited
``KAPATCH_ENABLED``), so for those two modules the wait goes one step further: their
import puts a stand-in on each function kapatch would hook there, and the first call to
one installs the runtime, then goes on through the function that took its place. The
first connection carries the policy like every later one.

The runtime's hooks replace a stand-in rather than wrap it (:func:`take_over`): they
keep what it stood in for as their original and as what uninstalling puts back, and a
caller that kept a reference to the stand-in goes through to them. Stand-ins nobody
replaced are removed once the runtime is installed (:func:`retire`).
"""

from __future__ import annotations

import sys

from ._registry import FIRST_USE

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["MISSING", "StandIn", "hand_over", "place", "retire", "take_over"]

MISSING = object()
"""Not in the owner's own ``__dict__`` (inherited): what ``take_over`` returns to put back."""
_placed: list[StandIn] = []


class StandIn:
    """One function standing in for ``owner.name`` until the runtime is installed."""

    __slots__ = ("function", "name", "original", "owner", "saved", "successor")

    def __init__(self, owner: Any, name: str, finish: Callable[[], None]) -> None:
        self.owner = owner
        self.name = name
        self.saved = vars(owner).get(name, MISSING)  # what uninstalling puts back
        self.original: Callable[..., Any] = getattr(owner, name)
        self.successor: Callable[..., Any] | None = None  # the hook that took this one's place
        state, original = self, self.original
        from functools import wraps  # loaded: socket and asyncio, the triggers, import it

        @wraps(original)
        def stand_in(*args: Any, **kwargs: Any) -> Any:
            finish()  # never raises; returns once no install is under way
            successor = state.successor
            return (original if successor is None else successor)(*args, **kwargs)

        stand_in.__kapatch_stand_in__ = self  # type: ignore[attr-defined]  # found by take_over
        self.function = stand_in


def place(trigger: str, finish: Callable[[], None]) -> None:
    """Put stand-ins on what *trigger* (a key of ``_registry.FIRST_USE``, just imported) holds."""
    for module_name, attribute, names in FIRST_USE[trigger]:
        owner = sys.modules[module_name]
        if attribute:
            owner = getattr(owner, attribute)
        for name in names:
            if not hasattr(owner, name) or take_over(owner, name)[2] is not None:
                continue
            placed = StandIn(owner, name, finish)
            setattr(owner, name, placed.function)
            _placed.append(placed)


def take_over(owner: Any, name: str) -> tuple[object, Any, StandIn | None]:
    """(what to put back, what to call, the stand-in replaced or None) for a hook on ``owner.name``.

    The caller puts its hook in place with :func:`hand_over`.
    """
    current = vars(owner).get(name, MISSING)
    found = getattr(current, "__kapatch_stand_in__", None)
    if isinstance(found, StandIn) and found.owner is owner:
        return found.saved, found.original, found
    return current, getattr(owner, name), None


def hand_over(owner: Any, name: str, function: Callable[..., Any], stand_in: StandIn | None) -> None:
    """Put *function* on ``owner.name``; a stand-in it replaced (from :func:`take_over`) then
    leads there, for a caller that kept a reference to it."""
    setattr(owner, name, function)
    if stand_in is not None:
        stand_in.successor = function


def retire() -> None:
    """Remove the stand-ins the runtime did not replace (what it does not hook)."""
    while _placed:
        placed = _placed.pop()
        if vars(placed.owner).get(placed.name, MISSING) is placed.function:
            if placed.saved is MISSING:
                delattr(placed.owner, placed.name)
            else:
                setattr(placed.owner, placed.name, placed.saved)
