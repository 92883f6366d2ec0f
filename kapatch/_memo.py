"""Bounded caches as plain dicts: what kapatch uses instead of ``functools.lru_cache``.

``functools`` costs ~1 ms at interpreter start, where kapatch's modules are defined;
a dict lookup is also what the hot paths (a plan per connect) want. A cache that
fills up is emptied: its keys are policies, rules and connection strings, a handful
per process, so filling one means a runaway caller, not a working set to keep.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from typing import TypeVar

    K = TypeVar("K")
    V = TypeVar("V")

__all__ = ["remember"]


def remember(cache: dict[K, V], key: K, value: V, maxsize: int) -> V:
    """Store *value* under *key* (emptying *cache* first when it holds *maxsize*); return it."""
    if len(cache) >= maxsize:
        cache.clear()
    cache[key] = value
    return value
