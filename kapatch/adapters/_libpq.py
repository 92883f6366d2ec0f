"""libpq, shared by the psycopg 3 and psycopg2 adapters: where it connects, and the policy as parameters.

libpq creates and connects its socket in C, so the socket hook never sees it; it sets
the keepalive options itself when given ``keepalives``, ``keepalives_idle``,
``keepalives_interval``, ``keepalives_count`` (seconds) and ``tcp_user_timeout``
(milliseconds). An adapter merges the parameters the application gave (conninfo,
keyword arguments, a service file) and calls :func:`plan_parameters`: the keepalive
parameters the application gave are its chosen fields (``kapatch._respect``), field by
field; the others get the policy. libpq's own default (keepalive on, OS timings) is not
a choice: the policy replaces it.
"""

from __future__ import annotations

import os
import sys

from .._records import record
from .._respect import NOTHING, TIMINGS, _kernel_defaults, fields_written, keepalive_off
from ..policy import MAX_USER_TIMEOUT_MS, Mode
from ..rules import Destination
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from ..policy import Policy
    from ._context import AdapterContext

__all__ = [
    "KEEPALIVE_PARAMETERS",
    "LibpqPlan",
    "chosen_in_parameters",
    "libpq_destination",
    "libpq_parameters",
    "plan_parameters",
    "service_parameters",
    "with_service",
]

KEEPALIVE_PARAMETERS = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
"""The libpq parameters that configure keepalive; each one the application gives is a chosen field."""

FIELD_OF = {
    "keepalives": "enabled",
    "keepalives_idle": "idle",
    "keepalives_interval": "interval",
    "keepalives_count": "count",
    "tcp_user_timeout": "user_timeout",
}

TCP_USER_TIMEOUT_SINCE = 120000  # libpq 12 added tcp_user_timeout; older ones reject the keyword
_DEFAULT_PORT = 5432
# libpq reads these when the conninfo leaves a parameter out (there are none for keepalive).
_ENVIRONMENT = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT"}


def _given(params: Mapping[str, object], name: str) -> bool:
    return params.get(name) not in (None, "")


def _as_int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None  # libpq itself rejects the connection string


def chosen_in_parameters(params: Mapping[str, object]) -> frozenset[str]:
    """The keepalive fields merged libpq parameters choose; ``keepalives=0`` chooses all of them.

    Turning keepalive off chooses the timings (there are no probes), and with libpq the
    user timeout too: libpq sets ``tcp_user_timeout`` only on a socket it turned keepalive
    on for, so no parameter can give such a connection a user timeout.
    """
    chosen = frozenset(FIELD_OF[name] for name in KEEPALIVE_PARAMETERS if _given(params, name))
    if _given(params, "keepalives") and _as_int(params["keepalives"]) == 0:
        chosen = keepalive_off(chosen) | {"user_timeout"}
    return chosen


def libpq_parameters(
    policy: Policy,
    *,
    kept: frozenset[str] = NOTHING,
    given: Mapping[str, object] | None = None,
    user_timeout_supported: bool = True,
) -> dict[str, int]:
    """The libpq keyword arguments that carry *policy* to the fields not in *kept*.

    A parameter left out keeps libpq's default (OS timings, no user timeout) or, for a
    kept field, the application's own value in *given* (its merged parameters). An
    ``auto`` user timeout spans the probes the connection will really send: the
    application's idle + interval * count where it kept timings, not the policy's.
    """
    parameters: dict[str, int] = {}
    if "enabled" not in kept:
        parameters["keepalives"] = 1
    # Policy guarantees all three timings or none (None: the OS timings).
    timings = {"idle": policy.idle, "interval": policy.interval, "count": policy.count}
    for name in ("keepalives_idle", "keepalives_interval", "keepalives_count"):
        value = timings[FIELD_OF[name]]
        if value is not None and FIELD_OF[name] not in kept:
            parameters[name] = value
    user_timeout = policy.user_timeout_ms
    if policy.user_timeout == "auto" and not kept.isdisjoint(TIMINGS):
        user_timeout = _auto_user_timeout_ms(policy, kept, given or {})
    if user_timeout is not None and user_timeout_supported and "user_timeout" not in kept:
        parameters["tcp_user_timeout"] = user_timeout
    return parameters


def _auto_user_timeout_ms(policy: Policy, kept: frozenset[str], given: Mapping[str, object]) -> int | None:
    """idle + interval * count of the probes libpq will set up: the application's where kept."""
    if "enabled" in kept and _as_int(given.get("keepalives", 1)) == 0:
        return None  # keepalive off: libpq would not set a user timeout anyway
    defaults = _kernel_defaults() or (None, None, None)
    values = []
    for name, policy_value, default in zip(
        ("keepalives_idle", "keepalives_interval", "keepalives_count"),
        (policy.idle, policy.interval, policy.count),
        defaults,
        strict=True,
    ):
        value = _as_int(given.get(name, "")) if FIELD_OF[name] in kept else policy_value
        values.append(default if value is None else value)
    idle, interval, count = values
    if idle is None or interval is None or count is None:
        return policy.user_timeout_ms
    return min((idle + interval * count) * 1000, MAX_USER_TIMEOUT_MS)


@record
class LibpqPlan:
    """What to change in one connection's libpq parameters."""

    add: Mapping[str, int]
    """Keepalive parameters to pass (they win over the application's conninfo string)."""
    drop: frozenset[str]
    """The application's keepalive parameters to remove first (override mode, or replaced by add)."""


def plan_parameters(
    context: AdapterContext, adapter: str, params: Mapping[str, object], *, user_timeout_supported: bool
) -> LibpqPlan | None:
    """Decide once for a connection with merged libpq *params*; ``None``: leave the call as it is.

    Counts the connection (not when it is not TCP). Values from a service file must be
    merged into *params* by the caller (:func:`service_parameters`).
    """
    destination = libpq_destination(params)
    if destination is None:
        return None  # a Unix socket: keepalive does not apply
    chosen = chosen_in_parameters(params)
    decision = context.decide(adapter, destination, chosen=chosen)
    if decision.action != "apply" or decision.policy is None:
        return None
    policy = decision.policy
    # The application's fields that stay as it gave them: those it chose and the policy
    # would write (decision.kept), and in respect mode also those the policy leaves alone.
    kept = decision.kept
    if context.config_for(adapter).mode is Mode.RESPECT:
        kept |= chosen - fields_written(policy)
    wanted = libpq_parameters(policy, kept=kept, given=params, user_timeout_supported=user_timeout_supported)
    drop = frozenset(name for name in KEEPALIVE_PARAMETERS if FIELD_OF[name] not in kept)
    return LibpqPlan(add=wanted, drop=drop)


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
    Decided for the first TCP host: libpq takes one set of keepalive parameters for all
    the hosts of a multi-host string, so the rules cannot differ per host.
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


def with_service(params: Mapping[str, object]) -> dict[str, object]:
    """*params* with what a service file adds: its values fill what the conninfo leaves out, as in libpq."""
    return {**service_parameters(params), **params}


class LibpqAdapter(Adapter):
    """What the libpq adapters (psycopg, psycopg2) share: rewrite the connect call's arguments.

    Subclasses implement :meth:`_configure`; the wrapper never stops the application from
    connecting. It serves async connects too: it only rewrites the arguments and returns
    wrapped()'s coroutine untouched, so nothing here blocks or awaits.
    """

    def _wrap_connect(
        self, wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
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
        raise NotImplementedError
