"""Adapter discovery through the ``kapatch.adapters`` entry-point group.

The built-in adapters are registered the same way (pyproject.toml), so a third
party's adapter is a peer, not a plug-in bolted on. Names are read without
importing anything; a class is loaded only when its adapter is enabled.
"""

from __future__ import annotations

import functools

from ._dist_info import entry_points

__all__ = ["BUILTIN_ADAPTERS", "ENTRY_POINT_GROUP", "adapter_entry_points", "adapter_names"]

ENTRY_POINT_GROUP = "kapatch.adapters"

# Order matters: library adapters claim their sockets before the raw-socket fallback sees them.
BUILTIN_ADAPTERS: dict[str, str] = {
    "urllib3": "kapatch.adapters.urllib3:Urllib3Adapter",
    "redis": "kapatch.adapters.redis:RedisAdapter",
    "psycopg": "kapatch.adapters.psycopg:PsycopgAdapter",
    "httpx": "kapatch.adapters.httpx:HttpxAdapter",
    "socket": "kapatch.adapters.socket:SocketAdapter",
}


@functools.lru_cache(maxsize=1)
def adapter_entry_points() -> dict[str, str]:
    """Adapter name -> ``module:Class``; built-ins first, then any third party's."""
    found = dict(BUILTIN_ADAPTERS)
    for name, target in entry_points(ENTRY_POINT_GROUP).items():
        found.setdefault(name, target)
    return found


def adapter_names() -> tuple[str, ...]:
    return tuple(adapter_entry_points())
