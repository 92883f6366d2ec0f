"""The doctor's coverage section: for every client library and runtime installed here that
kapatch knows of, whether its connections carry the policy, and why not where they do not.

A silent miss is the worst failure for a tool like this, so libraries kapatch cannot
configure are listed as loudly as those it can. The verdict per library, strongest first:

* ``verified``: the live self-test connected through it and read the policy back;
* ``covered``: an enabled adapter owns its connect path, not exercised by the self-test;
* ``adapter off``: the adapter that would cover it is not enabled here (and why);
* ``not covered``: kapatch cannot reach its sockets (the reason says why);
* ``failed``: the self-test connected through it and the policy was not there.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

from ._records import record

__all__ = ["KNOWN", "Known", "coverage_section", "render_coverage"]


@record
class Known:
    """What kapatch knows about one distribution's connections."""

    adapters: tuple[str, ...]
    """Adapters that cover its connections, best first (the first registered one counts)."""
    clients: tuple[str, ...] = ()
    """Self-test clients that connect through it (``kapatch._selftest._CLIENTS``)."""
    uncovered: str = ""
    """Why nothing covers it, when no adapter in ``adapters`` is registered."""


_STDLIB_SOCKET = ("socket",)  # pure-Python clients connect through socket.socket.connect
KNOWN: Mapping[str, Known] = {
    "urllib3": Known(("urllib3",), ("urllib3",)),
    "requests": Known(("urllib3",), ("urllib3",)),
    "botocore": Known(("urllib3",)),
    "redis": Known(("redis",), ("redis", "redis.asyncio")),
    "psycopg": Known(("psycopg",), ("psycopg", "psycopg.async")),
    "psycopg-pool": Known(("psycopg",), ("psycopg", "psycopg.async")),  # its connections are psycopg's
    "httpx": Known(("httpx",), ("httpx", "httpx.async")),
    "httpcore": Known(("httpx",), ("httpx", "httpx.async")),
    "gevent": Known(("gevent",), ("gevent",)),
    "uvloop": Known(("uvloop",), ("uvloop",)),
    "aiohttp": Known(_STDLIB_SOCKET, ("asyncio",)),
    "anyio": Known(_STDLIB_SOCKET, ("asyncio",)),
    "asyncpg": Known(_STDLIB_SOCKET, ("asyncio",)),
    "aiomysql": Known(_STDLIB_SOCKET, ("asyncio",)),
    "PyMySQL": Known(_STDLIB_SOCKET, ("socket",)),
    "trio": Known(_STDLIB_SOCKET),
    "Twisted": Known(_STDLIB_SOCKET),
    "tornado": Known(_STDLIB_SOCKET),
    "pymongo": Known(("pymongo", "socket")),
    "amqp": Known(("amqp", "socket")),
    "kombu": Known(("amqp", "socket")),
    "pika": Known(_STDLIB_SOCKET),
    "elasticsearch": Known(("urllib3",)),
    "psycopg2": Known(("psycopg2",), uncovered="libpq opens and connects its socket in C"),
    "psycopg2-binary": Known(("psycopg2",), uncovered="libpq opens and connects its socket in C"),
    "mysqlclient": Known(("mysqlclient",), uncovered="libmysqlclient opens and connects its socket in C"),
    "grpcio": Known(("grpc",), uncovered="gRPC core opens and connects its sockets in C"),
    "pycurl": Known((), uncovered="libcurl opens and connects its sockets in C"),
    "pylibmc": Known((), uncovered="libmemcached opens and connects its sockets in C"),
    "confluent-kafka": Known((), uncovered="librdkafka opens and connects its sockets in C"),
    "cassandra-driver": Known(_STDLIB_SOCKET),
}


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def coverage_section(
    adapters: Mapping[str, str | None],
    checks: Sequence[Mapping[str, Any]],
    *,
    known: Mapping[str, Known] = KNOWN,
) -> dict[str, dict[str, Any]]:
    """One entry per known distribution installed here.

    *adapters*: every registered adapter -> ``None`` when it is enabled (would be, by this
    configuration), else why not. *checks*: the live self-test's checks (may be empty).
    """
    by_client = {check.get("client"): check for check in checks}
    section: dict[str, dict[str, Any]] = {}
    for distribution, entry in sorted(known.items(), key=lambda item: item[0].lower()):
        version = _installed(distribution)
        if version is None:
            continue
        section[distribution] = {"version": version, **_verdict(entry, adapters, by_client)}
    return section


def _verdict(
    entry: Known, adapters: Mapping[str, str | None], by_client: Mapping[Any, Mapping[str, Any]]
) -> dict[str, Any]:
    adapter = next((name for name in entry.adapters if name in adapters), None)
    if adapter is None:
        return {"state": "not covered", "adapter": None, "why": entry.uncovered or "no adapter"}
    off = adapters[adapter]
    if off is not None:
        return {"state": "adapter off", "adapter": adapter, "why": off}
    ran = [by_client[client] for client in entry.clients if client in by_client]
    failed = [c for c in ran if c.get("error") or c.get("mismatches")]
    if failed:
        why = "; ".join(f"{c['client']}: {c.get('error') or ', '.join(c['mismatches'])}" for c in failed)
        return {"state": "failed", "adapter": adapter, "why": why}
    verified = [c["client"] for c in ran if c.get("verified")]
    if verified:
        why = f"read back live (self-test: {', '.join(verified)})"
        return {"state": "verified", "adapter": adapter, "why": why}
    return {"state": "covered", "adapter": adapter, "why": f"the {adapter} adapter owns its connect path"}


def render_coverage(section: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for distribution, entry in section.items():
        head = f"  {distribution:<16} {entry['version']:<12} {entry['state']:<12}"
        lines.append(f"{head} {entry['why']}")
    return lines or ["  no client library kapatch knows of is installed"]
