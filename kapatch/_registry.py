"""Adapter discovery through the ``kapatch.adapters`` entry-point group.

The built-in adapters are registered the same way (pyproject.toml), so a third
party's adapter is a peer, not a plug-in bolted on. Names are read without
importing anything; a class is loaded only when its adapter is enabled.
"""

from __future__ import annotations

from ._dist_info import entry_points

__all__ = ["BUILTIN_ADAPTERS", "ENTRY_POINT_GROUP", "adapter_entry_points", "adapter_names", "clear_cache"]

ENTRY_POINT_GROUP = "kapatch.adapters"

# Order matters: library adapters claim their sockets before the raw-socket fallback sees them.
BUILTIN_ADAPTERS: dict[str, str] = {
    "urllib3": "kapatch.adapters.urllib3:Urllib3Adapter",
    "redis": "kapatch.adapters.redis:RedisAdapter",
    "psycopg": "kapatch.adapters.psycopg:PsycopgAdapter",
    "httpx": "kapatch.adapters.httpx:HttpxAdapter",
    "socket": "kapatch.adapters.socket:SocketAdapter",
}


_found: dict[str, str] | None = None  # read once per process (functools costs ~1 ms at start)


def adapter_entry_points() -> dict[str, str]:
    """Adapter name -> ``module:Class``; built-ins first, then any third party's."""
    global _found  # noqa: PLW0603 - a once-per-process cache
    if _found is None:
        found = dict(BUILTIN_ADAPTERS)
        for name, target in entry_points(ENTRY_POINT_GROUP).items():
            found.setdefault(name, target)
        _found = found
    return _found


def clear_cache() -> None:
    """Discover the adapters again on next use (tests, or after installing an adapter)."""
    global _found  # noqa: PLW0603
    _found = None


def adapter_names() -> tuple[str, ...]:
    return tuple(adapter_entry_points())
