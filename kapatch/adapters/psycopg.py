"""psycopg 3 (sync, asyncio, and so psycopg_pool): the policy as libpq connection parameters.

libpq creates and connects its socket in C, so the socket hook never sees it.
libpq sets the options itself when given ``keepalives``, ``keepalives_idle``,
``keepalives_interval``, ``keepalives_count`` (seconds) and ``tcp_user_timeout``
(milliseconds), so this adapter wraps ``Connection.connect`` and
``AsyncConnection.connect`` (psycopg_pool calls ``connection_class.connect``), and
``psycopg.connect``, a binding psycopg makes at import, and adds them to the call's
keyword arguments, which win over the conninfo string. libpq's own default
(keepalive on, OS timings) counts as not configured: the policy replaces it.
Respect mode goes field by field (``kapatch._respect``, ``kapatch.adapters._libpq``):
``keepalives_idle=30`` alone keeps that idle and gets the policy's interval, count and
user timeout (``auto``: 30 + interval * count); ``keepalives=0`` keeps keepalive off.

Decided once per ``connect()`` call, for the first TCP host of the conninfo:
libpq takes one set of keepalive parameters for all the hosts of a
multi-host string, so the rules cannot differ per host. Rules see the host
name the application gave and, when it is an IP literal or ``hostaddr`` is
given, the IP; libpq resolves names in C, so CIDR rules do not match a bare
host name. Hosts and keepalive settings in a service file (``service=``) count
as the application's. Unix-socket connections are not TCP: left alone, not counted.

Not reached: a ``from psycopg import connect`` done *before* ``install()`` keeps
the original binding (``psycopg.connect(...)`` and the classes are reached either way).
"""

from __future__ import annotations

from types import MappingProxyType

from .. import _log
from .._memo import remember
from ._libpq import (
    KEEPALIVE_PARAMETERS,
    TCP_USER_TIMEOUT_SINCE,
    LibpqAdapter,
    libpq_destination,
    libpq_parameters,
    plan_parameters,
    service_parameters,
    with_service,
)

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from typing import Any, ClassVar

    from ._libpq import LibpqPlan

__all__ = [
    "KEEPALIVE_PARAMETERS",
    "PsycopgAdapter",
    "libpq_destination",
    "libpq_parameters",
    "service_parameters",
]


class PsycopgAdapter(LibpqAdapter):
    name: ClassVar[str] = "psycopg"
    distribution = "psycopg"
    modules = ("psycopg",)
    minimum_version = (3, 1)
    below_version = (4,)

    def __init__(self) -> None:
        super().__init__()
        self._user_timeout_supported = True

    def patch(self, module_name: str) -> None:
        import psycopg
        from psycopg import pq

        self._user_timeout_supported = pq.version() >= TCP_USER_TIMEOUT_SINCE
        if not self._user_timeout_supported:
            _log.log(
                _log.INFO,
                "kapatch: libpq %s has no tcp_user_timeout (needs 12+): psycopg connections get "
                "keepalive only",
                pq.version(),
            )
        # Connection.connect and AsyncConnection.connect are classmethods: the Patcher
        # keeps the classmethod objects from the class __dict__ and puts them back.
        self.patcher.wrap(psycopg.Connection, "connect", self._wrap_connect)
        self.patcher.wrap(psycopg.AsyncConnection, "connect", self._wrap_connect)
        # psycopg/__init__.py binds ``connect = Connection.connect`` at import time, so
        # ``psycopg.connect`` would bypass the class attribute: wrap that binding too.
        if getattr(psycopg, "connect", None) is not None:
            self.patcher.wrap(psycopg, "connect", self._wrap_connect)

    def _configure(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments to connect with: the policy added, or the call unchanged."""
        from psycopg.conninfo import make_conninfo

        conninfo = args[0] if args else kwargs.get("conninfo", "")
        if not isinstance(conninfo, str):
            return args, kwargs
        plan = self._plan_for(conninfo, kwargs)
        if plan is None:
            return args, kwargs
        new_kwargs = {k: v for k, v in kwargs.items() if k not in plan.drop}
        new_kwargs.update(plan.add)
        if _mentions(conninfo, plan.drop.difference(plan.add)):
            # A parameter the policy leaves to the OS (override mode) must not survive from
            # the string either: keyword arguments only replace, they cannot remove.
            kept = {k: v for k, v in _parse_conninfo(conninfo).items() if k not in plan.drop}
            conninfo = make_conninfo("", **kept)
        if args:
            return (conninfo, *args[1:]), new_kwargs
        if "conninfo" in kwargs:
            new_kwargs["conninfo"] = conninfo
        return args, new_kwargs

    def _plan_for(self, conninfo: str, kwargs: Mapping[str, Any]) -> LibpqPlan | None:
        """Decide once for this connection: the libpq parameters to change, or ``None`` to leave it."""
        if self.context is None:
            return None
        try:
            parsed = _parse_conninfo(conninfo)
        except Exception:
            return None  # a malformed conninfo: psycopg itself reports it to the application
        # As conninfo_to_dict(conninfo, **kwargs): keyword arguments win, None means unset;
        # connect()'s own keywords (autocommit, row_factory, ...) are not libpq's.
        params: dict[str, object] = dict(parsed)
        params.update((k, v) for k, v in kwargs.items() if v is not None and k not in _PSYCOPG_KEYWORDS)
        return plan_parameters(
            self.context,
            self.name,
            with_service(params),
            user_timeout_supported=self._user_timeout_supported,
        )


# Keyword-only parameters of Connection.connect / AsyncConnection.connect (psycopg 3.1-3.3).
_PSYCOPG_KEYWORDS = frozenset(
    {"conninfo", "autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)


def _mentions(conninfo: str, names: Collection[str]) -> bool:
    """Whether *conninfo* sets any of the keepalive parameters *names*."""
    if not names or ("keepalives" not in conninfo and "tcp_user_timeout" not in conninfo):
        return False  # cheap test first: most strings never name them
    return any(name in _parse_conninfo(conninfo) for name in names)


_PARSED: dict[str, Mapping[str, str]] = {}


def _parse_conninfo(conninfo: str) -> Mapping[str, str]:
    """libpq's own parse of *conninfo* (key/value or URL), read-only.

    Cached: a pool connects with the same string again and again, and the parse builds
    every libpq option each time (about 50 us, a measurable share of a loopback connect).
    """
    found = _PARSED.get(conninfo)
    if found is None:
        from psycopg.conninfo import conninfo_to_dict

        parsed = MappingProxyType({k: str(v) for k, v in conninfo_to_dict(conninfo).items()})
        found = remember(_PARSED, conninfo, parsed, 64)
    return found
