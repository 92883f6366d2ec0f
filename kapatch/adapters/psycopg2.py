"""psycopg2 (and so SQLAlchemy ``postgresql+psycopg2``, Django, ``psycopg2.pool``, psycogreen):
the policy as libpq connection parameters.

libpq creates and connects its socket in C, so the socket hook never sees it; libpq sets
the keepalive options itself from ``keepalives*`` and ``tcp_user_timeout`` (libpq 12+).
``psycopg2.connect`` is Python: it merges the dsn string and the keyword arguments into one
dsn (``make_dsn``) and hands it to the C function ``psycopg2._connect``, a module global it
looks up at each call. This adapter wraps that global: it reads the merged dsn with
``psycopg2.extensions.parse_dsn`` (service files and ``PG*`` variables seen as libpq sees
them, ``kapatch.adapters._libpq``), decides once, and passes the dsn on with the policy's
keepalive parameters added. Because the wrap sits behind ``psycopg2.connect``, a
``from psycopg2 import connect`` made before ``install()`` is covered too, and so is every
library that connects through it: SQLAlchemy's psycopg2 dialect, Django's postgresql
backend when it runs on psycopg2, ``psycopg2.pool``, psycogreen (it only sets a wait
callback), with or without ``connection_factory``, sync or ``async_=1``.

Respect mode goes field by field: the keepalive parameters the application gave (dsn,
keyword arguments, service file) are its chosen fields and stay as given; the others get
the policy (``keepalives_idle=30`` alone: the policy's interval, count and a user timeout
spanning 30 + interval * count). libpq's own default (keepalive on, OS timings) is not a
choice. ``keepalives=0`` chooses every field (libpq sets no user timeout without keepalive).
Unix-socket connections (no host, or a directory) are not TCP: left alone, not counted.

Visible to the application: the added parameters are part of the dsn libpq gets, so they
appear in ``conn.dsn`` and ``conn.info.dsn_parameters`` (and, for override mode, a keepalive
parameter the policy leaves to the OS is missing there). Not reached: connections made by
calling ``psycopg2.extensions.connection(dsn)`` (or a subclass) directly, without
``psycopg2.connect``.
"""

from __future__ import annotations

from types import MappingProxyType

from .. import _log
from .._memo import remember
from ._libpq import TCP_USER_TIMEOUT_SINCE, LibpqAdapter, plan_parameters, with_service

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, ClassVar

__all__ = ["Psycopg2Adapter"]


class Psycopg2Adapter(LibpqAdapter):
    name: ClassVar[str] = "psycopg2"
    pooled = True
    distribution = "psycopg2"
    alternative_distributions = ("psycopg2-binary",)
    modules = ("psycopg2",)
    minimum_version = (2, 8)
    below_version = (3,)

    def __init__(self) -> None:
        super().__init__()
        self._user_timeout_supported = True

    def patch(self, module_name: str) -> None:
        import psycopg2
        import psycopg2.extensions

        version = psycopg2.extensions.libpq_version()
        self._user_timeout_supported = version >= TCP_USER_TIMEOUT_SINCE
        if not self._user_timeout_supported:
            _log.log(
                _log.INFO,
                "kapatch: libpq %s has no tcp_user_timeout (needs 12+): psycopg2 connections get "
                "keepalive only",
                version,
            )
        self.patcher.wrap(psycopg2, "_connect", self._wrap_connect)

    def _configure(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``_connect(dsn, connection_factory=None, **kwasync)`` arguments with the policy in the dsn."""
        dsn = args[0] if args else kwargs.get("dsn")
        if not isinstance(dsn, str) or self.context is None:
            return args, kwargs
        parsed = _parse_dsn(dsn)
        if parsed is None:
            return args, kwargs  # malformed: psycopg2 reports it to the application
        plan = plan_parameters(
            self.context, self.name, with_service(parsed), user_timeout_supported=self._user_timeout_supported
        )
        if plan is None:
            return args, kwargs
        from psycopg2.extensions import make_dsn

        merged = {k: v for k, v in parsed.items() if k not in plan.drop}
        merged.update((k, str(v)) for k, v in plan.add.items())
        new_dsn = make_dsn(**merged)
        if args:
            return (new_dsn, *args[1:]), kwargs
        return args, {**kwargs, "dsn": new_dsn}


_PARSED: dict[str, Mapping[str, str] | None] = {}


def _parse_dsn(dsn: str) -> Mapping[str, str] | None:
    """libpq's own parse of *dsn* (key/value or URL), read-only; ``None`` when malformed.

    Cached: a pool connects with the same string again and again.
    """
    if dsn in _PARSED:
        return _PARSED[dsn]
    from psycopg2.extensions import parse_dsn

    try:
        parsed: Mapping[str, str] | None = MappingProxyType(dict(parse_dsn(dsn)))
    except Exception:
        parsed = None
    return remember(_PARSED, dsn, parsed, 64)
