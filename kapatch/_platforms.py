"""Policy -> socket operations, one compiler per platform.

Constants come from the running ``socket`` module when it has them and fall back to
the values in the platform's headers, so a plan can be compiled (and tested) for a
platform other than the one running: the tests pass a fake socket module.
"""

from __future__ import annotations

import math
import sys

from ._plan import IoctlOp, Plan, SockOpt

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from .policy import Policy

__all__ = ["PLATFORMS", "compile_for", "current_platform"]

# Header values: Linux <netinet/tcp.h>; Darwin <netinet/tcp.h> (TCP_KEEPALIVE 0x10,
# TCP_KEEPINTVL 0x101, TCP_KEEPCNT 0x102, TCP_RXT_CONNDROPTIME 0x80); FreeBSD
# <netinet/tcp.h>; Windows <ws2ipdef.h>/<mstcpip.h>.
_FALLBACKS: dict[str, dict[str, int]] = {
    "linux": {
        "SOL_SOCKET": 1, "SO_KEEPALIVE": 9, "IPPROTO_TCP": 6,
        "TCP_KEEPIDLE": 4, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 6, "TCP_USER_TIMEOUT": 18,
    },
    "darwin": {
        "SOL_SOCKET": 0xFFFF, "SO_KEEPALIVE": 0x8, "IPPROTO_TCP": 6,
        "TCP_KEEPALIVE": 0x10, "TCP_KEEPINTVL": 0x101, "TCP_KEEPCNT": 0x102,
        "TCP_RXT_CONNDROPTIME": 0x80,
    },
    "freebsd": {
        "SOL_SOCKET": 0xFFFF, "SO_KEEPALIVE": 0x8, "IPPROTO_TCP": 6,
        "TCP_KEEPIDLE": 256, "TCP_KEEPINTVL": 512, "TCP_KEEPCNT": 1024,
    },
    "win32": {
        "SOL_SOCKET": 0xFFFF, "SO_KEEPALIVE": 0x8, "IPPROTO_TCP": 6,
        "TCP_KEEPIDLE": 3, "TCP_KEEPINTVL": 17, "TCP_KEEPCNT": 16, "TCP_MAXRT": 5,
        "SIO_KEEPALIVE_VALS": 0x98000004,
    },
    "generic": {"SOL_SOCKET": 0xFFFF, "SO_KEEPALIVE": 0x8, "IPPROTO_TCP": 6},
}  # fmt: skip


def current_platform(name: str | None = None) -> str:
    """Normalise ``sys.platform`` to a key of :data:`PLATFORMS`."""
    raw = sys.platform if name is None else name
    if raw.startswith("linux"):
        return "linux"
    if raw.startswith("freebsd"):
        return "freebsd"
    if raw in ("darwin", "win32"):
        return raw
    return "generic"


class _Constants:
    def __init__(self, platform: str, module: ModuleType) -> None:
        self._table = _FALLBACKS[platform]
        self._module = module
        self._native = current_platform() == platform

    def __getitem__(self, name: str) -> int:
        # Trust the socket module only on its own platform: Linux's TCP_KEEPIDLE is not Darwin's.
        if self._native:
            value = getattr(self._module, name, None)
            if isinstance(value, int):
                return value
        return self._table[name]


def _keepalive_on(c: _Constants) -> SockOpt:
    return SockOpt("SO_KEEPALIVE", c["SOL_SOCKET"], c["SO_KEEPALIVE"], 1, "enabled")


def _timings(c: _Constants, policy: Policy, idle_name: str, *, optional: bool = False) -> tuple[SockOpt, ...]:
    if policy.idle is None or policy.interval is None or policy.count is None:
        return ()
    tcp = c["IPPROTO_TCP"]
    return (
        SockOpt(idle_name, tcp, c[idle_name], policy.idle, "idle", optional),
        SockOpt("TCP_KEEPINTVL", tcp, c["TCP_KEEPINTVL"], policy.interval, "interval", optional),
        SockOpt("TCP_KEEPCNT", tcp, c["TCP_KEEPCNT"], policy.count, "count", optional),
    )


def _linux(policy: Policy, c: _Constants) -> Plan:
    # "off" is written as 0 (the kernel's own "no user timeout"), so that a policy saying
    # off really leaves none behind, e.g. in override mode over an application's value.
    timeout = policy.user_timeout_ms or 0
    ops = (
        _keepalive_on(c),
        *_timings(c, policy, "TCP_KEEPIDLE"),
        SockOpt("TCP_USER_TIMEOUT", c["IPPROTO_TCP"], c["TCP_USER_TIMEOUT"], timeout, "user_timeout"),
    )
    return Plan("linux", policy, setsockopts=ops)


def _darwin(policy: Policy, c: _Constants) -> Plan:
    # Darwin names the idle time TCP_KEEPALIVE (requests-toolbelt#391, channels_redis#28).
    ops = [_keepalive_on(c), *_timings(c, policy, "TCP_KEEPALIVE")]
    timeout = policy.user_timeout_ms
    if timeout is not None:
        # The nearest analogue: drop after this many seconds of unacknowledged retransmission.
        ops.append(
            SockOpt("TCP_RXT_CONNDROPTIME", c["IPPROTO_TCP"], c["TCP_RXT_CONNDROPTIME"],
                    math.ceil(timeout / 1000), "user_timeout")
        )  # fmt: skip
    return Plan("darwin", policy, setsockopts=tuple(ops))


def _freebsd(policy: Policy, c: _Constants) -> Plan:
    ops = (_keepalive_on(c), *_timings(c, policy, "TCP_KEEPIDLE"))
    unsupported: tuple[str, ...] = ()
    if policy.user_timeout_ms is not None:
        unsupported = ("user_timeout: FreeBSD has no TCP_USER_TIMEOUT (net.inet.tcp sysctls only)",)
    return Plan("freebsd", policy, setsockopts=ops, unsupported=unsupported)


def _windows(policy: Policy, c: _Constants) -> Plan:
    if policy.idle is None or policy.interval is None or policy.count is None:
        ops: tuple[SockOpt, ...] = (_keepalive_on(c),)
        ioctls: tuple[IoctlOp, ...] = ()
    else:
        # SIO_KEEPALIVE_VALS works on every Windows and sets idle and interval (in ms);
        # the probe count has a socket option only from Windows 10 1703, hence optional.
        ioctls = (
            IoctlOp("SIO_KEEPALIVE_VALS", c["SIO_KEEPALIVE_VALS"],
                    (1, policy.idle * 1000, policy.interval * 1000), ("enabled", "idle", "interval")),
        )  # fmt: skip
        ops = (
            SockOpt("TCP_KEEPCNT", c["IPPROTO_TCP"], c["TCP_KEEPCNT"], policy.count, "count",
                    optional=True),
        )  # fmt: skip
    timeout = policy.user_timeout_ms
    if timeout is not None:
        # TCP_MAXRT: seconds of retransmission before the connection is dropped.
        ops += (
            SockOpt("TCP_MAXRT", c["IPPROTO_TCP"], c["TCP_MAXRT"], math.ceil(timeout / 1000),
                    "user_timeout", optional=True),
        )  # fmt: skip
    return Plan("win32", policy, ioctls=ioctls, setsockopts=ops)


def _generic(policy: Policy, c: _Constants) -> Plan:
    unsupported = []
    if not policy.keeps_os_timings:
        unsupported.append("idle/interval/count: no known per-socket options on this platform")
    if policy.user_timeout_ms is not None:
        unsupported.append("user_timeout: no known per-socket option on this platform")
    return Plan("generic", policy, setsockopts=(_keepalive_on(c),), unsupported=tuple(unsupported))


PLATFORMS: dict[str, Callable[[Policy, _Constants], Plan]] = {
    "linux": _linux,
    "darwin": _darwin,
    "freebsd": _freebsd,
    "win32": _windows,
    "generic": _generic,
}


def compile_for(policy: Policy, platform: str, module: ModuleType) -> Plan:
    """The plan for *policy* on *platform*; a disabled policy compiles to nothing."""
    if not policy.enabled:
        return Plan(platform, policy)
    return PLATFORMS[platform](policy, _Constants(platform, module))
