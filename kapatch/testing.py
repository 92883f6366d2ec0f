"""Helpers for users' own tests: does this connection carry the policy? Read from the kernel.

    from kapatch.testing import assert_keepalive

    client = redis.Redis(...); client.ping()
    assert_keepalive(client, profile="aws")

Works on a socket, a file descriptor, an asyncio ``StreamWriter`` or transport,
a redis-py client or connection (sync or asyncio), a urllib3 connection, pool or
response, a requests ``Session``'s pooled connections, an httpx response still
streaming (``client.stream(...)``) and a psycopg connection.
Client libraries are never imported here: objects are recognised by their attributes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from .policy import Policy
from .sockopts import KeepaliveState, inspect

__all__ = ["assert_keepalive", "expected_policy", "keepalive_states", "sockets_of"]


def expected_policy(
    policy: Policy | str | None = None, *, adapter: str | None = None, **fields: object
) -> Policy:
    """The policy to compare with.

    *policy*: a :class:`Policy`, or a profile name. ``None``: the installed policy
    (of *adapter* when given, with its per-adapter overrides), else the one the
    environment describes. *fields* (``idle="30s"``, ``count=3``) change it further.
    """
    if isinstance(policy, str):
        from .profiles import get_profile

        base = get_profile(policy).policy
    elif policy is None:
        from .config import load_config
        from .runtime import current_config

        config = current_config() or load_config()
        base = config.for_adapter(adapter).policy if adapter else config.policy
    else:
        base = policy
    return base.evolve(**fields) if fields else base


@contextmanager
def sockets_of(obj: Any) -> Iterator[list[Any]]:
    """The live TCP sockets behind *obj* (see the module docstring), for reading options.

    A psycopg connection's socket belongs to libpq: it is read through a duplicate
    descriptor, closed on exit. Raises ``TypeError`` for an object it cannot see into
    and ``ValueError`` when the object has no open connection.
    """
    with ExitStack() as stack:
        found = _collect(obj, stack)
        if not found:
            raise ValueError(f"{obj!r} has no open TCP connection to inspect (connect it first)")
        yield found


def _dup(fd: int, stack: ExitStack) -> socket.socket:
    return stack.enter_context(socket.socket(fileno=os.dup(fd)))


def _collect(obj: Any, stack: ExitStack) -> list[Any]:  # noqa: PLR0911, PLR0912 - one branch per kind of object
    if isinstance(obj, socket.socket):
        return [obj]
    if isinstance(obj, int) and not isinstance(obj, bool):
        return [_dup(obj, stack)]
    # asyncio: StreamWriter / transport -> the TransportSocket, which answers getsockopt
    get_extra_info = getattr(obj, "get_extra_info", None)
    if callable(get_extra_info):
        sock = get_extra_info("socket")
        return [sock] if sock is not None else []
    extensions = getattr(obj, "extensions", None)  # httpx / httpcore response (read it in stream mode)
    if isinstance(extensions, dict) and "network_stream" in extensions:
        return _collect(extensions["network_stream"], stack)
    pgconn = getattr(obj, "pgconn", None)  # psycopg Connection / AsyncConnection
    if pgconn is not None and hasattr(pgconn, "socket"):
        return [_dup(pgconn.socket, stack)]
    if hasattr(obj, "connection_pool"):  # redis-py client (sync or asyncio)
        return [s for conn in _redis_connections(obj.connection_pool) for s in _collect(conn, stack)]
    for name in ("_sock", "_writer"):  # redis-py Connection: sync socket, asyncio StreamWriter
        if hasattr(obj, name) and hasattr(obj, "host"):
            inner = getattr(obj, name)
            return _collect(inner, stack) if inner is not None else []
    if hasattr(obj, "sock") and hasattr(obj, "host"):  # urllib3 / http.client connection
        return [obj.sock] if obj.sock is not None else []
    if hasattr(obj, "status") and (hasattr(obj, "connection") or hasattr(obj, "_connection")):
        conn = getattr(obj, "connection", None) or getattr(obj, "_connection", None)  # urllib3 response
        return _collect(conn, stack) if conn is not None else []
    if hasattr(obj, "pool") and hasattr(obj.pool, "queue"):  # urllib3 HTTPConnectionPool: idle connections
        return [s for conn in list(obj.pool.queue) if conn is not None for s in _collect(conn, stack)]
    if hasattr(obj, "pools") and hasattr(obj, "connection_from_host"):  # urllib3 PoolManager
        return [s for key in list(obj.pools.keys()) for s in _collect(obj.pools.get(key), stack)]
    if hasattr(obj, "adapters") and hasattr(obj, "mount"):  # requests.Session
        managers = [getattr(a, "poolmanager", None) for a in obj.adapters.values()]
        return [s for m in managers if m is not None for s in _collect(m, stack)]
    raise TypeError(
        f"kapatch.testing: cannot find the socket of {type(obj).__module__}.{type(obj).__qualname__}; "
        "pass the socket itself"
    )


def _redis_connections(pool: Any) -> list[Any]:
    """Connections a redis-py pool holds right now (idle and in use) that have a socket."""
    found: list[Any] = []
    for name in ("_available_connections", "_in_use_connections", "_connections"):
        held = getattr(pool, name, None)
        if held is None:
            continue
        found.extend(held if not isinstance(held, dict) else held.keys())
    unique = {id(c): c for c in found}.values()  # a connection may sit in two of those
    return [
        c for c in unique if getattr(c, "_sock", None) is not None or getattr(c, "_writer", None) is not None
    ]


def keepalive_states(obj: Any) -> list[KeepaliveState]:
    """What the kernel reports for every TCP socket behind *obj*."""
    with sockets_of(obj) as sockets:
        return [inspect(sock) for sock in sockets]


def _describe(sock: Any) -> str:
    try:
        return f"{sock.getsockname()} -> {sock.getpeername()}"
    except OSError:
        return f"fd {sock.fileno()} (not connected)"


def assert_keepalive(
    obj: Any, policy: Policy | str | None = None, *, adapter: str | None = None, **fields: object
) -> list[KeepaliveState]:
    """Fail with a readable diff unless every TCP socket behind *obj* carries the policy.

    *policy*, *adapter* and *fields* as in :func:`expected_policy`. Returns what the
    kernel reported, one state per socket.
    """
    wanted = expected_policy(policy, adapter=adapter, **fields)
    states = []
    failing = 0
    report: list[str] = []
    with sockets_of(obj) as sockets:
        for sock in sockets:
            state = inspect(sock)
            states.append(state)
            differences = state.mismatches(wanted)
            if differences:
                failing += 1
                report.append(f"  socket {_describe(sock)}:")
                report.extend(f"    - {difference}" for difference in differences)
                report.append(
                    f"    kernel reports: keepalive {'on' if state.enabled else 'off'}, idle {state.idle}, "
                    f"interval {state.interval}, count {state.count}, user timeout {state.user_timeout_ms}ms"
                )
    if report:
        raise AssertionError(
            f"keepalive does not match the policy ({wanted.describe()}) on {failing} of "
            f"{len(states)} socket(s):\n" + "\n".join(report)
        )
    return states
