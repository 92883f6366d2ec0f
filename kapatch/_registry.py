"""Adapter discovery through the ``kapatch.adapters`` entry-point group.

The built-in adapters are registered the same way (pyproject.toml), so a third
party's adapter is a peer, not a plug-in bolted on. Names are read without
importing anything; a built-in adapter's class is loaded only when its library is first
imported (``LAZY_ADAPTERS``), a third party's when kapatch is installed.
"""

from __future__ import annotations

from ._dist_info import entry_points

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "BUILTIN_ADAPTERS",
    "ENTRY_POINT_GROUP",
    "LAZY_ADAPTERS",
    "LEFT_OFF",
    "NOT_SELECTED",
    "OPT_IN_ADAPTERS",
    "adapter_entry_points",
    "adapter_names",
    "clear_cache",
    "load_when",
    "start_triggers",
]

ENTRY_POINT_GROUP = "kapatch.adapters"

# Order matters: library adapters claim their sockets before the raw-socket fallback sees them.
BUILTIN_ADAPTERS: dict[str, str] = {
    "urllib3": "kapatch.adapters.urllib3:Urllib3Adapter",
    "redis": "kapatch.adapters.redis:RedisAdapter",
    "psycopg": "kapatch.adapters.psycopg:PsycopgAdapter",
    "httpx": "kapatch.adapters.httpx:HttpxAdapter",
    "socket": "kapatch.adapters.socket:SocketAdapter",
}


LAZY_ADAPTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "urllib3": (
        "kapatch.adapters.urllib3:Urllib3Adapter",
        ("urllib3.connection", "urllib3.contrib.socks", "urllib3.connectionpool"),
    ),
    "redis": (
        "kapatch.adapters.redis:RedisAdapter",
        (
            "redis.connection",
            "redis.asyncio.connection",
            "redis.client",
            "redis.asyncio.client",
            "redis.asyncio.cluster",
        ),
    ),
    "psycopg": ("kapatch.adapters.psycopg:PsycopgAdapter", ("psycopg",)),
    "httpx": (
        "kapatch.adapters.httpx:HttpxAdapter",
        (
            "httpcore._backends.sync",
            "httpcore._backends.anyio",
            "httpcore._backends.trio",
            "httpcore._sync.connection_pool",
            "httpcore._async.connection_pool",
            "httpcore._sync.http11",
            "httpcore._sync.http2",
            "httpcore._async.http11",
            "httpcore._async.http2",
        ),
    ),
    "socket": ("kapatch.adapters.socket:SocketAdapter", ("socket",)),
    "amqp": ("kapatch.adapters.amqp:AmqpAdapter", ("amqp.transport",)),
    "eventloops": ("kapatch.adapters.eventloops:EventLoopsAdapter", ("asyncio",)),
    "gevent": ("kapatch.adapters.gevent:GeventAdapter", ("gevent._socketcommon",)),
    "grpc": ("kapatch.adapters.grpc:GrpcAdapter", ("grpc", "grpc.aio")),
    "inbound": ("kapatch.adapters.inbound:InboundAdapter", ("socket",)),
    "mysqlclient": ("kapatch.adapters.mysqlclient:MysqlclientAdapter", ("MySQLdb.connections",)),
    "psycopg2": ("kapatch.adapters.psycopg2:Psycopg2Adapter", ("psycopg2",)),
    "psycopg_pool": ("kapatch.adapters.psycopg_pool:PsycopgPoolAdapter", ("psycopg_pool",)),
    "pymongo": ("kapatch.adapters.pymongo:PymongoAdapter", ("pymongo.pool_shared", "pymongo.pool")),
    "uvloop": ("kapatch.adapters.uvloop:UvloopAdapter", ("uvloop",)),
}
"""Built-in adapter -> (its class, the modules whose first import loads it): the class's own
``modules``, or ``socket`` for an adapter that only hooks ``socket.socket``. The runtime
imports an adapter's module (and checks its library's version) only then, not at
interpreter start; a third party's adapter is loaded at install. tests/test_boot_path.py
holds this table to the classes."""

FIRST_USE: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    # The stdlib class, as socket defines it (before gevent could replace the module's name).
    "socket": (("socket", "socket", ("connect", "connect_ex", "listen")),),
    # Every asyncio loop calls it when it starts running: the eventloops adapter's hook.
    "asyncio": (("asyncio.events", "", ("_set_running_loop",)), ("asyncio", "", ("_set_running_loop",))),
}
"""Trigger modules whose import, at a deferred start, only puts stand-ins on what the
adapters waiting for them hook (module, a class in it or "", its functions): the runtime
installs at the first call to one (``kapatch._first_use``). tests/test_boot_path.py holds
this to those adapters' hooks."""

OPT_IN_ADAPTERS = frozenset(("inbound",))
"""Built-in adapters that are off unless turned on (``Adapter.opt_in``): not loaded at all
when the configuration leaves them off. tests/test_boot_path.py holds this to the classes."""

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


NOT_SELECTED = "not selected by the configuration"
LEFT_OFF = "left off"  # an opt-in adapter the configuration did not turn on


def load_when(name: str, target: str, config: Config) -> tuple[str, ...] | str | None:
    """When adapter *name* (class *target*) loads under *config*: the one place that says so.

    The modules whose first import loads it (a built-in); ``None``: at install (a third
    party's class, or a built-in name one took over); ``NOT_SELECTED`` or ``LEFT_OFF``: never.
    The runtime's install and the deferred start (:func:`start_triggers`) both ask here.
    """
    if not config.wants_adapter(name):
        return NOT_SELECTED
    lazy = LAZY_ADAPTERS.get(name)
    if lazy is None or lazy[0] != target:
        return None
    if name in OPT_IN_ADAPTERS and name not in config.opted_in:
        return LEFT_OFF
    return lazy[1]


def start_triggers(config: Config) -> tuple[str, ...] | None:
    """The modules whose first import needs the runtime installed with *config*, or ``None``
    when it must be installed at once (a third party's adapter is enabled at install)."""
    if not config.enabled:
        return ()
    found: set[str] = set()
    for name, target in adapter_entry_points().items():
        when = load_when(name, target, config)
        if when is None:
            return None
        if not isinstance(when, str):
            found.update(when)
    return tuple(sorted(found))
