"""A fake ``socket`` module for the platforms this machine is not (darwin, win32, freebsd).

kapatch compiles a policy into a plan of ``setsockopt``/``ioctl`` calls per platform.
Only Linux runs here, so the other platforms' plans are checked against fakes:

* :data:`HEADERS` holds each platform's constants, typed in from the platform headers
  (not imported from kapatch, so a wrong table in ``kapatch/_platforms.py`` shows up as a
  test failure rather than being compared with itself). Sources, checked by hand:

  - darwin: xnu ``bsd/netinet/tcp.h`` (TCP_KEEPALIVE 0x10 "idle time used when
    SO_KEEPALIVE is enabled", TCP_RXT_CONNDROPTIME 0x80, TCP_KEEPINTVL 0x101,
    TCP_KEEPCNT 0x102) and ``bsd/sys/socket.h`` (SOL_SOCKET 0xffff, SO_KEEPALIVE 0x0008);
  - freebsd: ``sys/netinet/tcp.h`` (TCP_KEEPIDLE 256, TCP_KEEPINTVL 512, TCP_KEEPCNT 1024)
    and ``sys/sys/socket.h``;
  - win32: ``ws2ipdef.h`` (TCP_KEEPALIVE = TCP_KEEPIDLE 3, TCP_MAXRT 5, TCP_KEEPCNT 16,
    TCP_KEEPINTVL 17), ``mstcpip.h`` (SIO_KEEPALIVE_VALS = _WSAIOW(IOC_VENDOR, 4)
    = IOC_IN 0x80000000 | IOC_VENDOR 0x18000000 | 4) and ``winsock2.h``.

* :class:`FakeSocket` records every call in order and keeps the values it was given;
  :meth:`FakeSocketModule.refuse` makes one option (or the ioctl) fail with an errno,
  the way an old OS build refuses an option it does not know (Windows before 10 1703
  answers TCP_KEEPCNT with WSAENOPROTOOPT).

Like the real module, only the Windows socket has an ``ioctl`` method.
"""

from __future__ import annotations

import errno
import os
import types
from dataclasses import dataclass, field

__all__ = ["HEADERS", "Call", "FakeSocket", "FakeSocketModule", "fake_socket_module"]

SOL_SOCKET_BSD = 0xFFFF
SO_KEEPALIVE_BSD = 0x0008
IPPROTO_TCP = 6
IOC_IN = 0x80000000
IOC_VENDOR = 0x18000000

HEADERS: dict[str, dict[str, int]] = {
    "linux": {
        "SOL_SOCKET": 1, "SO_KEEPALIVE": 9, "IPPROTO_TCP": IPPROTO_TCP,
        "TCP_KEEPIDLE": 4, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 6, "TCP_USER_TIMEOUT": 18,
        "AF_INET": 2, "AF_INET6": 10,
    },
    "darwin": {
        "SOL_SOCKET": SOL_SOCKET_BSD, "SO_KEEPALIVE": SO_KEEPALIVE_BSD, "IPPROTO_TCP": IPPROTO_TCP,
        "TCP_KEEPALIVE": 0x10, "TCP_KEEPINTVL": 0x101, "TCP_KEEPCNT": 0x102,
        "TCP_RXT_CONNDROPTIME": 0x80,
        "AF_INET": 2, "AF_INET6": 30,
    },
    "freebsd": {
        "SOL_SOCKET": SOL_SOCKET_BSD, "SO_KEEPALIVE": SO_KEEPALIVE_BSD, "IPPROTO_TCP": IPPROTO_TCP,
        "TCP_KEEPIDLE": 256, "TCP_KEEPINTVL": 512, "TCP_KEEPCNT": 1024,
        "AF_INET": 2, "AF_INET6": 28,
    },
    "win32": {
        "SOL_SOCKET": SOL_SOCKET_BSD, "SO_KEEPALIVE": SO_KEEPALIVE_BSD, "IPPROTO_TCP": IPPROTO_TCP,
        "TCP_KEEPIDLE": 3, "TCP_KEEPINTVL": 17, "TCP_KEEPCNT": 16, "TCP_MAXRT": 5,
        "SIO_KEEPALIVE_VALS": IOC_IN | IOC_VENDOR | 4,
        "AF_INET": 2, "AF_INET6": 23,
    },
    # An OS kapatch has no table for: only the BSD-style SO_KEEPALIVE is assumed.
    "generic": {
        "SOL_SOCKET": SOL_SOCKET_BSD, "SO_KEEPALIVE": SO_KEEPALIVE_BSD, "IPPROTO_TCP": IPPROTO_TCP,
        "AF_INET": 2, "AF_INET6": 24,
    },
}  # fmt: skip

SOCK_STREAM = 1
SOCK_DGRAM = 2


@dataclass(frozen=True)
class Call:
    """One recorded call: ``("setsockopt", level, option, value)`` or ``("ioctl", control, value)``."""

    kind: str
    args: tuple[object, ...]

    def as_tuple(self) -> tuple[object, ...]:
        return (self.kind, *self.args)


@dataclass
class FakeSocket:
    """A socket that records calls; refusals come from its module."""

    module: FakeSocketModule
    family: int
    type: int = SOCK_STREAM
    calls: list[Call] = field(default_factory=list)
    options: dict[tuple[int, int], object] = field(default_factory=dict)
    closed: bool = False

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append(Call("setsockopt", (level, option, value)))
        self._check(("setsockopt", level, option))
        self.options[(level, option)] = value

    def getsockopt(self, level: int, option: int) -> object:
        self._check(("getsockopt", level, option))
        return self.options.get((level, option), 0)

    def close(self) -> None:
        self.closed = True

    def call_tuples(self) -> list[tuple[object, ...]]:
        return [call.as_tuple() for call in self.calls]

    def _check(self, key: tuple[object, ...]) -> None:
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        refused = self.module.refused.get(key[1:]) if key[0] == "setsockopt" else None
        if refused is not None:
            raise OSError(refused, os.strerror(refused))


@dataclass
class FakeWindowsSocket(FakeSocket):
    """Windows sockets alone have ``ioctl`` (CPython: ``socket.ioctl``, Windows only)."""

    def ioctl(self, control: int, value: tuple[int, int, int]) -> None:
        self.calls.append(Call("ioctl", (control, value)))
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        refused = self.module.refused.get(("ioctl", control))
        if refused is not None:
            raise OSError(refused, os.strerror(refused))
        self.options[("ioctl", control)] = value  # type: ignore[index]


class FakeSocketModule(types.ModuleType):
    """Stands in for ``socket`` on *platform*: its constants, and a ``socket`` factory."""

    def __init__(self, platform: str) -> None:
        super().__init__(f"fakesocket_{platform}")
        self.platform = platform
        self.refused: dict[tuple[object, ...], int] = {}
        self.SOCK_STREAM = SOCK_STREAM
        self.SOCK_DGRAM = SOCK_DGRAM
        for name, value in HEADERS[platform].items():
            setattr(self, name, value)

    def socket(self, family: int | None = None, type: int = SOCK_STREAM) -> FakeSocket:
        cls = FakeWindowsSocket if self.platform == "win32" else FakeSocket
        return cls(self, HEADERS[self.platform]["AF_INET"] if family is None else family, type)

    def refuse(self, name: str, error: int = errno.ENOPROTOOPT) -> None:
        """Make setsockopt of option *name* (or ``SIO_KEEPALIVE_VALS``) fail with *error*."""
        table = HEADERS[self.platform]
        if name == "SIO_KEEPALIVE_VALS":
            self.refused[("ioctl", table[name])] = error
            return
        level = table["SOL_SOCKET"] if name.startswith("SO_") else table["IPPROTO_TCP"]
        self.refused[(level, table[name])] = error

    # A module must be hashable: compile_plan() caches on it.
    __hash__ = object.__hash__


def fake_socket_module(platform: str) -> FakeSocketModule:
    """A fresh fake ``socket`` module for *platform* (darwin, win32, freebsd, generic, linux)."""
    return FakeSocketModule(platform)
