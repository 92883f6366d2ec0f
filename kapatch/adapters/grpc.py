"""grpcio, sync and ``grpc.aio`` (and so the Google Cloud client libraries): HTTP/2 keepalive.

gRPC core creates and connects its sockets in C, so the socket hook never sees them.
What reaches them is channel options, so this adapter wraps ``grpc.insecure_channel``,
``grpc.secure_channel``, ``grpc.aio.insecure_channel`` and ``grpc.aio.secure_channel``
(module attributes: a ``from grpc import insecure_channel`` done before ``install()``
keeps the original) and adds, decided once per channel for the target's host and port:

* ``grpc.keepalive_time_ms`` = idle: an HTTP/2 PING after that long without activity;
* ``grpc.keepalive_timeout_ms`` = interval * count. gRPC core sets TCP_USER_TIMEOUT =
  keepalive_timeout_ms on the socket itself (gRPC proposal A18; read back here from the
  live socket), so a PING (or any data) the peer's kernel never acknowledges closes the
  connection within it: a blocked call to a vanished host fails (UNAVAILABLE, ETIMEDOUT)
  within idle + interval * count, the policy's bound (the lab measures it). There is no
  channel option for the user timeout alone: the policy's ``user_timeout`` cannot be
  given to gRPC; SO_KEEPALIVE stays off (gRPC pings instead);
* ``grpc.http2.ping_timeout_ms`` = interval * count too: in grpcio 1.85 an unanswered
  PING whose bytes *were* acknowledged (a peer process stopped or frozen, its kernel
  alive) is timed by this option (default 1 minute), not by keepalive_timeout_ms
  (measured: a SIGSTOPped server is noticed after 60.6 s with keepalive_timeout_ms=2000
  alone, after 2.6 s with this option);
* ``grpc.http2.max_pings_without_data`` = 0, so PINGs go on during a quiet call (the
  default, 2, stops them after two);
* ``grpc.keepalive_permit_without_calls`` = 1 only with a gRPC-specific idle (below).

gRPC servers police client PINGs. A default grpcio server (and grpc-go's and
grpc-java's) accepts at most one PING per 5 minutes without data while calls are
active, and none while there are none (grpcio: one per 2 hours); after 2 strikes it
sends GOAWAY ``too_many_pings`` (ENHANCE_YOUR_CALM): measured here with a 1 s keepalive,
a 6 s call in flight **fails** with UNAVAILABLE "Too many pings" after 3 to 5 s, and the
client logs an error and doubles its keepalive time. The profiles' idle (60 s) would do
that to every quiet call longer than about 4 minutes (watches, streaming pulls). So, unless
the idle was set for this adapter (``KAPATCH_GRPC_IDLE``, TOML ``[grpc] idle``: you
know your servers allow it: they set ``grpc.http2.min_ping_interval_without_data_ms``
or their language's equivalent), the PING time is
``max(idle, 300 s)``, gRPC's default server minimum, and PINGs are sent only while
calls are active (idle channels: a dead connection still fails the next call within
keepalive_timeout_ms, through TCP_USER_TIMEOUT). With a gRPC-specific idle the policy
goes in as given, PINGs on idle channels included.

Heartbeat: an HTTP/2 PING is answered by the peer's gRPC process, so it is an
application-level check. With ``heartbeat`` set, the PING time is the sooner of the idle's
and the heartbeat's, and keepalive_timeout_ms / http2.ping_timeout_ms (and so gRPC's
TCP_USER_TIMEOUT) are ``heartbeat_timeout``: a stopped or frozen server fails the next call
(UNAVAILABLE, "ping timeout") within heartbeat + heartbeat_timeout instead of blocking
until its deadline (measured: 2.0 to 2.5 s with 1 s / 1.5 s; without: until the deadline).
The floor above holds for a heartbeat inherited from the process-wide settings or a
profile (300 s, PINGs only during calls); one set for this adapter
(``KAPATCH_GRPC_HEARTBEAT``, ``[grpc] heartbeat``) goes in as given, PINGs on idle
channels included, and the servers must allow it: ``grpc.http2.min_ping_interval_without_data_ms``
(gRPC core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS) at most the heartbeat and
``grpc.keepalive_permit_without_calls`` = 1 (grpc-go: ``keepalive.EnforcementPolicy``
MinTime and PermitWithoutStream; grpc-java: ``permitKeepAliveTime``,
``permitKeepAliveWithoutCalls``), else they answer GOAWAY too_many_pings. The
application's own keepalive options win in respect mode, as below.

Servers (inbound, opt-in): with the inbound adapter on, ``grpc.server`` and
``grpc.aio.server`` get ``grpc.http2.min_ping_interval_without_data_ms`` = the inbound
idle and ``grpc.keepalive_permit_without_calls`` = 1, so a kapatch-configured fleet does
not punish its own clients, and server-side keepalive (PINGs to its clients) from the
inbound policy (counted under ``inbound``; rules see no address, the port comes later).
Options the application gave win in respect mode.

Respect mode: the application's own keepalive options are its chosen fields
(``keepalive_time_ms``: enabled and idle; ``keepalive_timeout_ms``: interval, count and
user timeout; so is ``grpc.http2.ping_timeout_ms``), kept in respect mode, replaced in
override mode; its ``permit_without_calls`` and ``max_pings_without_data`` are kept in
respect mode too. ``None`` or empty options are "not given". Targets that are not TCP
(``unix:``, ``unix-abstract:``, ``vsock:``) are left alone, not counted. Rules see the
target's host name (or IP literal) and port; gRPC resolves names in C, so CIDR rules do
not match a bare name.

Not covered: channels made in C or by other means than these four functions. HTTP/2
PINGs are answered by the peer's gRPC core (its I/O threads), not by the handler: they
detect a dead host, a broken network path and a stopped or frozen peer process (which
TCP keepalive cannot: the peer's kernel still answers), not a hung handler in a live
process (the tests keep a call open on a sleeping handler with PINGs every second).
"""

from __future__ import annotations

from .. import _log
from .._respect import ALL_FIELDS
from ..rules import Destination
from ._base import Adapter

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, ClassVar

    from ..config import AdapterConfig
    from ..policy import Policy

__all__ = ["GrpcAdapter", "channel_options", "grpc_destination", "server_options"]

KEEPALIVE_TIME = "grpc.keepalive_time_ms"
KEEPALIVE_TIMEOUT = "grpc.keepalive_timeout_ms"
PERMIT_WITHOUT_CALLS = "grpc.keepalive_permit_without_calls"
MAX_PINGS_WITHOUT_DATA = "grpc.http2.max_pings_without_data"
PING_TIMEOUT = "grpc.http2.ping_timeout_ms"
# The string behind GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS in gRPC core.
MIN_RECV_PING_INTERVAL = "grpc.http2.min_ping_interval_without_data_ms"

SERVER_PING_FLOOR_S = 300
"""The least PING interval gRPC servers accept by default (C core, Go, Java: 5 minutes)."""

_NO_ADAPTER = "kapatch-global"
_TIMEOUT_FIELDS = frozenset(("interval", "count", "user_timeout"))
_INFINITE = 2**31 - 1  # keepalive_time_ms of INT_MAX is gRPC's "keepalive off"
_DEFAULT_PORT = 443  # gRPC's dns resolver default port ("https")
_NOT_TCP = ("unix:", "unix-abstract:", "vsock:")
_KNOWN_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def _split_host_port(text: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``host``, a bare IPv6 literal -> (host, port or None)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # no port, or a bare IPv6 literal
        host, port_text = text, ""
    port = int(port_text) if port_text.isdecimal() else None
    return host, port


def grpc_destination(target: object) -> Destination | None:
    """Where a gRPC target connects first, as far as it can be told; ``None``: not TCP.

    ``dns:///host:port``, ``dns://authority/host:port``, ``dns:host:port``,
    ``ipv4:a.b.c.d:port,...``, ``ipv6:[::1]:port,...``, ``host:port``, ``[v6]:port``;
    other schemes (``xds:///name``) give their path as the host and no port.
    """
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    if not isinstance(target, str) or not target:
        return None
    if target.startswith(_NOT_TCP):
        return None
    rest = target
    scheme, sep, after = target.partition(":")
    if sep and (target.startswith(_KNOWN_SCHEMES) or after.startswith("//")):
        rest = after
        if rest.startswith("//"):  # an authority, usually empty: dns:///host:port
            rest = rest[2:].partition("/")[2]
        if scheme in ("ipv4", "ipv6"):
            rest = rest.split(",", 1)[0]
        elif scheme not in ("dns",):
            return Destination(host=rest, port=None) if rest else None
    host, port = _split_host_port(rest)
    if not host:
        return None
    is_ip = Destination(host=host).ip() is not None
    return Destination(host=host, address=host if is_ip else None, port=port or _DEFAULT_PORT)


def _as_items(options: object) -> list[tuple[Any, Any]] | None:
    """The options as a list of pairs, or ``None`` when they are not a sequence of pairs."""
    if options is None:
        return []
    try:
        items = [tuple(entry) for entry in options]  # type: ignore[attr-defined]
    except TypeError:
        return None
    if not all(len(entry) == 2 for entry in items):
        return None  # malformed: gRPC itself reports it to the application
    return [(entry[0], entry[1]) for entry in items]


def chosen_in_channel_options(items: Iterable[tuple[Any, Any]]) -> frozenset[str]:
    """The keepalive fields the application chose through its channel options."""
    chosen: set[str] = set()
    for key, value in items:
        if key == KEEPALIVE_TIME:
            if isinstance(value, int) and value >= _INFINITE:
                return ALL_FIELDS  # keepalive off (gRPC then sets no user timeout either)
            chosen |= {"enabled", "idle"}
        elif key in (KEEPALIVE_TIMEOUT, PING_TIMEOUT):
            chosen |= _TIMEOUT_FIELDS
    return frozenset(chosen)


def channel_options(policy: Policy, *, specific: bool, heartbeat_specific: bool = False) -> dict[str, int]:
    """The channel options that carry *policy*; empty for a policy keeping the OS timings, no heartbeat.

    *specific*: the idle was set for gRPC, so it is used as given and PINGs go on on idle
    channels; otherwise the PING time is at least :data:`SERVER_PING_FLOOR_S`.
    *heartbeat_specific*: the same for ``heartbeat``. With a heartbeat, the PING time is the
    sooner of the two and its timeout ``heartbeat_timeout`` (the PING *is* the heartbeat).
    """
    timers: list[tuple[int, bool]] = []  # (PING time in ms, whether it may go on idle channels)
    timeout = 0
    if policy.idle is not None and policy.interval is not None and policy.count is not None:
        timers.append(((policy.idle if specific else max(policy.idle, SERVER_PING_FLOOR_S)) * 1000, specific))
        timeout = policy.interval * policy.count * 1000
    if policy.heartbeat is not None:
        floor = 0 if heartbeat_specific else SERVER_PING_FLOOR_S * 1000
        timers.append((max(policy.heartbeat, floor), heartbeat_specific))
        timeout = round(policy.heartbeat_timeout_s * 1000)
    if not timers:
        return {}
    ping_time, without_calls = min(timers)
    return {
        KEEPALIVE_TIME: ping_time,
        KEEPALIVE_TIMEOUT: timeout,
        PING_TIMEOUT: timeout,
        PERMIT_WITHOUT_CALLS: 1 if without_calls else 0,
        MAX_PINGS_WITHOUT_DATA: 0,
    }


def server_options(policy: Policy) -> dict[str, int]:
    """The server options for the inbound *policy*: PINGs at its idle are welcome; its own keepalive."""
    if policy.idle is None or policy.interval is None or policy.count is None:
        return {}
    return {
        MIN_RECV_PING_INTERVAL: policy.idle * 1000,
        PERMIT_WITHOUT_CALLS: 1,
        KEEPALIVE_TIME: policy.idle * 1000,
        KEEPALIVE_TIMEOUT: policy.interval * policy.count * 1000,
        PING_TIMEOUT: policy.interval * policy.count * 1000,
    }


def _merge(
    items: list[tuple[Any, Any]], wanted: Mapping[str, int], keep: Callable[[str], bool]
) -> list[tuple[Any, Any]]:
    """*items* with *wanted* written over, except the keys *keep* says are the application's."""
    given = {key for key, _ in items}
    written = {key for key in wanted if not (key in given and keep(key))}
    if PING_TIMEOUT in written and keep(KEEPALIVE_TIMEOUT) and KEEPALIVE_TIMEOUT in given:
        written.discard(PING_TIMEOUT)  # the application's own timeout: no second one beside it
    merged = [(key, value) for key, value in items if key not in written]
    merged.extend((key, wanted[key]) for key in wanted if key in written)
    return merged


def _specific(own: AdapterConfig, inherited: AdapterConfig, name: str = "idle") -> bool:
    """Whether field *name* was set for this adapter (``KAPATCH_GRPC_IDLE``, ``[grpc] idle``, overrides)."""
    source = own.sources.get(name, "")
    if "KAPATCH_GRPC_" in source or "[grpc]" in source:
        return True
    # install(overrides={"grpc": ...}) says only "argument": a value of its own tells.
    return bool(getattr(own.policy, name) != getattr(inherited.policy, name))


class GrpcAdapter(Adapter):
    name: ClassVar[str] = "grpc"
    pooled = True
    heartbeat_mechanism = (
        "HTTP/2 PING: grpc.keepalive_time_ms = heartbeat (at least 300 s unless set for grpc), "
        "keepalive_timeout_ms and http2.ping_timeout_ms = heartbeat_timeout"
    )
    distribution = "grpcio"
    modules = ("grpc", "grpc.aio")
    minimum_version = (1, 50)
    below_version = (2,)

    def patch(self, module_name: str) -> None:
        import importlib

        module = importlib.import_module(module_name)
        for function, position in (("insecure_channel", 1), ("secure_channel", 2)):
            if getattr(module, function, None) is not None:
                self.patcher.wrap(module, function, self._channel_wrapper(position))
        if getattr(module, "server", None) is not None:
            self.patcher.wrap(module, "server", self._wrap_server)

    # -- channels -------------------------------------------------------------
    def _channel_wrapper(
        self, position: int
    ) -> Callable[[Callable[..., Any], object, tuple[Any, ...], dict[str, Any]], Any]:
        """A wrapper for a channel function whose ``options`` is positional argument *position*."""

        def wrapper(
            wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            try:
                target = args[0] if args else kwargs.get("target")
                args, kwargs = _with_options(
                    args, kwargs, position, lambda items: self._channel(target, items)
                )
            except Exception as error:  # never stop the application from making its channel
                if self.context is not None:
                    self.context.record_failure(self.name, "preparing gRPC channel options", error)
            return wrapped(*args, **kwargs)

        return wrapper

    def _channel(self, target: object, items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]] | None:
        """The options a channel to *target* is made with; ``None``: the application's, unchanged."""
        context = self.context
        destination = grpc_destination(target)
        if context is None or destination is None:
            return None
        decision = context.decide(self.name, destination, chosen=chosen_in_channel_options(items))
        if decision.action != "apply" or decision.policy is None:
            return None
        config = context.config_for(self.name)
        # A name no adapter has gets the process-wide settings: what grpc would inherit.
        inherited = context.config_for(_NO_ADAPTER)
        wanted = channel_options(
            decision.policy,
            specific=_specific(config, inherited),
            heartbeat_specific=_specific(config, inherited, "heartbeat"),
        )
        if not wanted:
            _log.log(_log.INFO, "kapatch: the grpc policy keeps the OS timings: gRPC channels left alone")
            return None
        return _merge(items, wanted, _keeper(decision.kept, respect=config.mode == "respect"))

    # -- servers (inbound) ----------------------------------------------------
    def _wrap_server(
        self, wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            # grpc.server(thread_pool, handlers, interceptors, options, ...); grpc.aio.server the same.
            args, kwargs = _with_options(args, kwargs, 3, self._server)
        except Exception as error:  # never stop the application from making its server
            if self.context is not None:
                self.context.record_failure(self.name, "preparing gRPC server options", error)
        return wrapped(*args, **kwargs)

    def _server(self, items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]] | None:
        """The options a server is made with, with the inbound policy; ``None``: unchanged."""
        context = self.context
        # Only with the inbound adapter on: the runtime's own listen hook makes the same test.
        if context is None or "inbound" not in getattr(context, "adapters", ()):
            return None
        # The address is not known yet (add_insecure_port comes later): rules see none.
        decision = context.decide("inbound", Destination(), chosen=chosen_in_channel_options(items))
        if decision.action != "apply" or decision.policy is None:
            return None
        wanted = server_options(decision.policy)
        respect = context.config_for("inbound").mode == "respect"
        return _merge(items, wanted, _keeper(decision.kept, respect=respect)) if wanted else None


def _keeper(kept: frozenset[str], *, respect: bool) -> Callable[[str], bool]:
    """Which of the application's own options to keep: those behind the fields respect mode kept."""

    def keep(key: str) -> bool:
        if key == KEEPALIVE_TIME:
            return "idle" in kept
        if key in (KEEPALIVE_TIMEOUT, PING_TIMEOUT):
            return bool(kept & _TIMEOUT_FIELDS)
        # Not policy fields, but the application's own word on its PINGs: respect mode keeps it.
        return respect

    return keep


def _with_options(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    position: int,
    rewrite: Callable[[list[tuple[Any, Any]]], list[tuple[Any, Any]] | None],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with ``options`` (positional *position* or keyword) rewritten."""
    in_args = len(args) > position
    items = _as_items(args[position] if in_args else kwargs.get("options"))
    merged = None if items is None else rewrite(items)
    if merged is None:
        return args, kwargs
    if in_args:
        return (*args[:position], merged, *args[position + 1 :]), kwargs
    return args, {**kwargs, "options": merged}
