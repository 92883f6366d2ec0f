"""psycopg 3 (sync, asyncio, and so psycopg_pool): the policy as libpq connection parameters.

libpq creates and connects its socket in C, so the socket hook never sees it.
libpq sets the options itself when given ``keepalives``, ``keepalives_idle``,
``keepalives_interval``, ``keepalives_count`` (seconds) and ``tcp_user_timeout``
(milliseconds), so this adapter wraps ``Connection.connect`` and
``AsyncConnection.connect`` (psycopg_pool calls ``connection_class.connect``), and
``psycopg.connect``, a binding psycopg makes at import, and adds them to the call's
keyword arguments, which win over the conninfo string. libpq's own default
(keepalive on, OS timings) counts as not configured: the policy replaces it.

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

import os
import sys
from types import MappingProxyType

from .. import _log
from .._memo import remember
from .._respect import ALL_FIELDS, NOTHING
from ..rules import Destination
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, ClassVar

    from ..policy import Policy

__all__ = [
    "KEEPALIVE_PARAMETERS",
    "PsycopgAdapter",
    "libpq_destination",
    "libpq_parameters",
    "service_parameters",
]

KEEPALIVE_PARAMETERS = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
"""The libpq parameters that configure keepalive; any of them given by the application is explicit."""

_DEFAULT_PORT = 5432
_TCP_USER_TIMEOUT_SINCE = 120000  # libpq 12 added tcp_user_timeout; older ones reject the keyword
# libpq reads these when the conninfo leaves a parameter out (there are none for keepalive).
_ENVIRONMENT = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT"}


def libpq_parameters(policy: Policy, *, user_timeout_supported: bool = True) -> dict[str, int]:
    """The libpq keyword arguments that carry *policy*; all of :data:`KEEPALIVE_PARAMETERS` or fewer.

    A parameter left out keeps libpq's default: OS timings, no user timeout.
    """
    parameters = {"keepalives": 1}
    # Policy guarantees all three timings or none (None: the OS timings).
    if policy.idle is not None and policy.interval is not None and policy.count is not None:
        parameters.update(
            keepalives_idle=policy.idle,
            keepalives_interval=policy.interval,
            keepalives_count=policy.count,
        )
    user_timeout = policy.user_timeout_ms
    if user_timeout is not None and user_timeout_supported:
        parameters["tcp_user_timeout"] = user_timeout
    return parameters


def _is_unix_socket(host: str) -> bool:
    # libpq's is_unixsock_path(): an absolute directory, or '@' for Linux's abstract namespace.
    return host.startswith(("/", "@"))


def _entry(values: list[str], index: int) -> str:
    # libpq: a single value applies to every host; otherwise one value per host.
    if len(values) == 1:
        return values[0]
    return values[index] if index < len(values) else ""


def libpq_destination(
    params: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> Destination | None:
    """Where libpq will connect first over TCP, from merged conninfo parameters; ``None``: not TCP.

    Parameters the conninfo leaves out come from ``PGHOST``/``PGHOSTADDR``/``PGPORT`` as in libpq.
    With no host at all libpq uses its default Unix socket (``localhost`` on Windows).
    """
    environ = os.environ if environ is None else environ

    def value(name: str) -> str:
        given = params.get(name)
        if given is None:  # libpq reads the environment only for a parameter absent, not empty
            given = environ.get(_ENVIRONMENT[name], "")
        return str(given).strip()

    hosts = value("host").split(",")
    addresses = value("hostaddr").split(",")
    ports = value("port").split(",")
    for index in range(max(len(hosts), len(addresses))):
        host = _entry(hosts, index).strip()
        address = _entry(addresses, index).strip()
        if not host and not address:
            host = "localhost" if sys.platform == "win32" else ""
        if not address and (not host or _is_unix_socket(host)):
            continue  # a Unix socket: keepalive does not apply
        port_text = _entry(ports, index).strip()
        port = int(port_text) if port_text.isdecimal() else _DEFAULT_PORT
        # hostaddr is where libpq connects; host then is only the name (TLS, password file).
        name = host if host and not _is_unix_socket(host) else None
        return Destination(host=name or address, address=address or None, port=port)
    return None


def _read_service(path: str, service: str) -> dict[str, str] | None:
    """The ``[service]`` section of one libpq service file, or ``None`` when it has none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    found: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found is not None:
                break  # libpq stops at the end of the first matching section
            if line.rstrip("]")[1:] == service:
                found = {}
            continue
        if found is not None and "=" in line:
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def service_parameters(
    params: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The parameters a libpq service (``service=`` or ``PGSERVICE``) adds, read as libpq does.

    The user's file (``servicefile=``, ``PGSERVICEFILE``, ``~/.pg_service.conf``) first, then
    ``$PGSYSCONFDIR/pg_service.conf``; libpq's compiled-in system directory is not known here.
    """
    environ = os.environ if environ is None else environ
    service = str(params.get("service") or environ.get("PGSERVICE", "")).strip()
    if not service:
        return {}
    user_file = str(params.get("servicefile") or environ.get("PGSERVICEFILE", "")).strip()
    # os.path, not pathlib: this module is imported at interpreter start when enabled.
    if user_file:
        candidates = [user_file]
    elif sys.platform == "win32":
        candidates = [os.path.join(environ.get("APPDATA", ""), "postgresql", ".pg_service.conf")]
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        candidates = [os.path.join(home, ".pg_service.conf")]
    if environ.get("PGSYSCONFDIR"):
        candidates.append(os.path.join(environ["PGSYSCONFDIR"], "pg_service.conf"))
    for candidate in candidates:
        found = _read_service(candidate, service)
        if found is not None:
            return found
    return {}


class PsycopgAdapter(Adapter):
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

        self._user_timeout_supported = pq.version() >= _TCP_USER_TIMEOUT_SINCE
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

    def _wrap_connect(
        self, wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # The same wrapper serves the async connect: it only rewrites the arguments and
        # returns wrapped()'s coroutine untouched, so nothing here blocks or awaits.
        try:
            args, kwargs = self._configure(args, kwargs)
        except Exception as error:  # never stop the application from connecting
            if self.context is not None:
                self.context.record_failure(self.name, "preparing libpq keepalive parameters", error)
        return wrapped(*args, **kwargs)

    def _configure(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments to connect with: the policy added, or the call unchanged."""
        from psycopg.conninfo import make_conninfo

        conninfo = args[0] if args else kwargs.get("conninfo", "")
        if not isinstance(conninfo, str):
            return args, kwargs
        wanted = self._parameters_for(conninfo, kwargs)
        if wanted is None:
            return args, kwargs
        new_kwargs = {k: v for k, v in kwargs.items() if k not in KEEPALIVE_PARAMETERS}
        new_kwargs.update(wanted)
        if _mentions_keepalive(conninfo):
            # Override mode: a parameter the policy leaves to the OS must not survive from
            # the string either (keyword arguments only replace, they cannot remove).
            kept = {k: v for k, v in _parse_conninfo(conninfo).items() if k not in KEEPALIVE_PARAMETERS}
            conninfo = make_conninfo("", **kept)
        if args:
            return (conninfo, *args[1:]), new_kwargs
        if "conninfo" in kwargs:
            new_kwargs["conninfo"] = conninfo
        return args, new_kwargs

    def _parameters_for(self, conninfo: str, kwargs: Mapping[str, Any]) -> dict[str, int] | None:
        """Decide once for this connection: the libpq parameters to set, or ``None`` to leave it."""
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
        # Values from a service file fill what the conninfo leaves out, as in libpq.
        params = {**service_parameters(params), **params}
        destination = libpq_destination(params)
        if destination is None:
            return None
        explicit = any(params.get(name) not in (None, "") for name in KEEPALIVE_PARAMETERS)
        decision = self.context.decide(self.name, destination, chosen=ALL_FIELDS if explicit else NOTHING)
        if decision.action != "apply" or decision.policy is None:
            return None
        return libpq_parameters(decision.policy, user_timeout_supported=self._user_timeout_supported)


# Keyword-only parameters of Connection.connect / AsyncConnection.connect (psycopg 3.1-3.3).
_PSYCOPG_KEYWORDS = frozenset(
    {"conninfo", "autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)


def _mentions_keepalive(conninfo: str) -> bool:
    if "keepalives" not in conninfo and "tcp_user_timeout" not in conninfo:
        return False  # cheap test first: most strings never name them
    return any(name in _parse_conninfo(conninfo) for name in KEEPALIVE_PARAMETERS)


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
