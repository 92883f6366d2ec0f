"""Apply a compiled plan to one socket, and read the effective values back from the kernel."""

from __future__ import annotations

import _socket  # the C module: socket.py's constants without its ~5 ms (enum) at start
import errno

from ._memo import remember
from ._platforms import _FALLBACKS, compile_for, current_platform
from ._records import record
from ._respect import TIMINGS
from ._tcp import TCP_FAMILIES, not_tcp_reason, raw_family, raw_type
from .policy import MAX_USER_TIMEOUT_MS

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    import socket
    from types import ModuleType
    from typing import Protocol

    from ._plan import Plan
    from .policy import Policy

    class SocketLike(Protocol):
        """A socket, or a socket-like object such as asyncio's ``TransportSocket``."""

        @property
        def family(self) -> int: ...
        @property
        def type(self) -> int: ...
        def getsockopt(self, level: int, optname: int, /) -> int: ...


__all__ = [
    "ApplyResult",
    "KeepaliveState",
    "apply_decided",
    "apply_plan",
    "compile_plan",
    "inspect",
    "not_tcp_reason",
    "wanted_values",
]

_TCP_FAMILIES = TCP_FAMILIES

# The errors by which an OS says "no such option" (Windows reports WSA codes).
_UNSUPPORTED_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOPROTOOPT,
        errno.EINVAL,
        getattr(errno, "WSAENOPROTOOPT", None),
        getattr(errno, "WSAEINVAL", None),
    )
    if code is not None
)


_PLANS: dict[tuple[Policy, str | None, ModuleType, frozenset[str]], Plan] = {}
_NOTHING_KEPT: frozenset[str] = frozenset()


def compile_plan(
    policy: Policy,
    platform: str | None = None,
    module: ModuleType = _socket,
    kept: frozenset[str] = _NOTHING_KEPT,
) -> Plan:
    """Compile *policy* for *platform* (default: this one), leaving the *kept* fields alone.

    Cached: a plan is computed once per policy and set of kept fields. An operation that
    carries a kept field together with others (Windows' one ioctl for on/idle/interval)
    is left out whole: the application's values win over a partial rewrite.
    """
    key = (policy, platform, module, kept)
    found = _PLANS.get(key)
    if found is None:
        plan = compile_for(policy, current_platform(platform), module)
        if kept:
            plan = _without(plan, kept)
        found = remember(_PLANS, key, plan, 128)
    return found


def _without(plan: Plan, kept: frozenset[str]) -> Plan:
    from ._records import replace

    return replace(
        plan,
        ioctls=tuple(op for op in plan.ioctls if kept.isdisjoint(op.fields)),
        setsockopts=tuple(op for op in plan.setsockopts if op.field not in kept),
        unsupported=tuple(note for note in plan.unsupported if note.partition(":")[0] not in kept),
    )


# The C-level getters return plain ints; socket.socket's properties convert each to an enum,
# which is most of the cost of this check on every connect.
_raw_family, _raw_type = raw_family, raw_type


@record
class ApplyResult:
    """What happened when a plan met a socket."""

    applied: tuple[str, ...] = ()
    """Options set, e.g. ``("SO_KEEPALIVE", "TCP_KEEPIDLE", ...)``."""
    failed: tuple[tuple[str, OSError], ...] = ()
    """Options the kernel refused, with its error."""
    unsupported: tuple[str, ...] = ()
    """Policy fields this platform (or OS version) cannot carry."""

    @property
    def ok(self) -> bool:
        return not self.failed


def apply_plan(sock: socket.socket, plan: Plan) -> ApplyResult:
    """Run every operation of *plan* on *sock*; never raises, reports instead.

    Every operation is tried even after one fails, so a kernel that lacks one
    option still gets the others.
    """
    applied: list[str] = []
    failed: list[tuple[str, OSError]] = []
    unsupported = list(plan.unsupported)
    for ioctl in plan.ioctls:
        control = getattr(sock, "ioctl", None)  # Windows sockets only
        if control is None:
            failed.append((ioctl.name, OSError(errno.EOPNOTSUPP, "this socket has no ioctl()")))
            continue
        try:
            control(ioctl.control, ioctl.value)
        except OSError as error:
            failed.append((ioctl.name, error))
        else:
            applied.append(ioctl.name)
    for op in plan.setsockopts:
        try:
            sock.setsockopt(op.level, op.option, op.value)
        except OSError as error:
            if op.optional and error.errno in _UNSUPPORTED_ERRNOS:
                unsupported.append(f"{op.field}: {op.name} not supported by this OS ({error})")
            else:
                failed.append((op.name, error))
        else:
            applied.append(op.name)
    return ApplyResult(tuple(applied), tuple(failed), tuple(unsupported))


def apply_decided(sock: socket.socket, policy: Policy, kept: frozenset[str]) -> ApplyResult:
    """Apply *policy* to the fields of *sock* not in *kept*; never raises, reports instead.

    An ``auto`` user timeout means "as long as the probes take": when the application
    kept some of the timings, that is its idle + interval * count, not the policy's, so
    the user timeout (which on Linux also ends probing once it elapses) never cuts the
    application's own probes short. It is then read back from the socket and computed
    here, after the other fields are written.
    """
    if policy.user_timeout != "auto" or "user_timeout" in kept or kept.isdisjoint(TIMINGS):
        return apply_plan(sock, compile_plan(policy, kept=kept))
    result = apply_plan(sock, compile_plan(policy, kept=kept | {"user_timeout"}))
    full = compile_plan(policy)
    op = next((op for op in full.setsockopts if op.field == "user_timeout"), None)
    if op is None:
        return result
    state = inspect(sock)
    value = op.value  # the policy's own bound: where keepalive is off there are no probes to wait for
    if state.enabled and None not in (state.idle, state.interval, state.count):
        bound_ms = (state.idle + state.interval * state.count) * 1000  # type: ignore[operator]
        value = min(bound_ms, MAX_USER_TIMEOUT_MS) if op.name == "TCP_USER_TIMEOUT" else -(-bound_ms // 1000)
    try:
        sock.setsockopt(op.level, op.option, value)
    except OSError as error:
        return ApplyResult(result.applied, (*result.failed, (op.name, error)), result.unsupported)
    return ApplyResult((*result.applied, op.name), result.failed, result.unsupported)


@record
class KeepaliveState:
    """The keepalive settings the kernel reports for one socket.

    A value the platform cannot report is ``None``. ``user_timeout_ms`` of 0
    means no user timeout (the kernel's retransmission limit applies).
    """

    enabled: bool
    idle: int | None
    interval: int | None
    count: int | None
    user_timeout_ms: int | None

    def mismatches(self, policy: Policy) -> tuple[str, ...]:
        """Each way this state differs from what *policy* asks for; empty when it matches."""
        found = []
        for name, value in wanted_values(policy).items():
            actual = getattr(self, name)
            if actual is not None and actual != value:
                found.append(f"{name}: kernel has {actual}, policy wants {value}")
        return tuple(found)


def wanted_values(policy: Policy) -> dict[str, object]:
    """What the kernel should report for a socket carrying *policy*, by KeepaliveState field.

    Empty for a disabled policy (nothing is wanted); no timings when it keeps the OS's.
    """
    if not policy.enabled:
        return {}
    wanted: dict[str, object] = {"enabled": True}
    if not policy.keeps_os_timings:
        wanted.update(idle=policy.idle, interval=policy.interval, count=policy.count)
    wanted["user_timeout_ms"] = policy.user_timeout_ms or 0
    return wanted


def inspect(sock: SocketLike) -> KeepaliveState:
    """Read the effective keepalive settings of a TCP socket back from the kernel.

    Raises ``ValueError`` for a socket that is not TCP (UDP, Unix): keepalive does not apply.
    """
    reason = not_tcp_reason(sock)
    if reason is not None:
        raise ValueError(f"kapatch.inspect: {reason}; keepalive applies to TCP sockets only")
    platform = current_platform()
    table = _FALLBACKS[platform]

    def read(level: str, name: str) -> int | None:
        option = getattr(_socket, name, table.get(name))
        if option is None:
            return None
        try:
            return sock.getsockopt(getattr(_socket, level, table[level]), option)
        except OSError:
            return None  # this OS version cannot report it

    idle_name = "TCP_KEEPALIVE" if platform == "darwin" else "TCP_KEEPIDLE"
    timeout_ms = read("IPPROTO_TCP", "TCP_USER_TIMEOUT") if platform == "linux" else None
    return KeepaliveState(
        enabled=bool(read("SOL_SOCKET", "SO_KEEPALIVE")),
        idle=read("IPPROTO_TCP", idle_name),
        interval=read("IPPROTO_TCP", "TCP_KEEPINTVL"),
        count=read("IPPROTO_TCP", "TCP_KEEPCNT"),
        user_timeout_ms=timeout_ms,
    )
