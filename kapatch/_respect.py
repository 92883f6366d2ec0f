"""Respect mode, field by field: which keepalive fields of one connection somebody *chose*.

The rule, the one place it is written down (every adapter applies it):

* A connection has five keepalive fields: ``enabled`` (SO_KEEPALIVE), ``idle``,
  ``interval``, ``count`` and ``user_timeout`` (TCP_USER_TIMEOUT).
* A field the **application** chose is kept in respect mode, whatever its value
  (``SO_KEEPALIVE=0`` included); the fields nobody chose get the policy. Override
  mode writes every field.
* Not a choice: the kernel's defaults (a value equal to a fresh socket's), a value a
  library hard-codes and its user did not pass (pymongo's 120/10/9, py-amqp's
  60/10/9 + 1 s, redis-py 8's 30/5/3, libpq's "keepalive on, OS timings",
  mysqlclient's SO_KEEPALIVE), and ``None`` or empty option arguments.
* Turning keepalive off chooses the probe timings too (there are no probes to time);
  the user timeout, which bounds unacknowledged data and sends nothing, stays a field
  of its own.
* Where an adapter cannot tell (a bare socket), the socket is read just before it
  connects (or just after, on paths that connect in C): SO_KEEPALIVE on, a timing that
  differs from the kernel's default, or a non-zero user timeout is a choice. A value
  set by hand to exactly the kernel's default cannot be told from the default: the
  policy replaces it.

``None`` for *chosen* means "read the socket"; an empty frozenset means "nothing chosen".
"""

from __future__ import annotations

import _socket

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, TypeAlias

    from .policy import Policy

__all__ = [
    "ALL_FIELDS",
    "MASK_OF",
    "NOTHING",
    "TIMINGS",
    "Chosen",
    "chosen_in_options",
    "chosen_mask",
    "chosen_on_socket",
    "fields_written",
    "option_field",
]

Chosen: TypeAlias = "frozenset[str] | None"

ALL_FIELDS = frozenset(("enabled", "idle", "interval", "count", "user_timeout"))
TIMINGS = frozenset(("idle", "interval", "count"))
NOTHING: frozenset[str] = frozenset()

_TCP = getattr(_socket, "IPPROTO_TCP", 6)


def _option_fields() -> dict[tuple[int, int], str]:
    found = {(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE): "enabled"}
    # TCP_KEEPALIVE is macOS's name for the idle time; TCP_USER_TIMEOUT is Linux only.
    for name, field in (
        ("TCP_KEEPIDLE", "idle"),
        ("TCP_KEEPALIVE", "idle"),
        ("TCP_KEEPINTVL", "interval"),
        ("TCP_KEEPCNT", "count"),
        ("TCP_USER_TIMEOUT", "user_timeout"),
    ):
        option = getattr(_socket, name, None)
        if option is not None:
            found[(_TCP, option)] = field
    return found


_OPTION_FIELDS = _option_fields()


def option_field(level: int, option: int) -> str | None:
    """The keepalive field a ``setsockopt(level, option, ...)`` sets, or ``None``."""
    return _OPTION_FIELDS.get((level, option))


def chosen_in_options(socket_options: Iterable[Any] | None) -> frozenset[str]:
    """The fields a list of ``(level, option, value)`` triples chooses (urllib3, httpcore, ...).

    Only a list or tuple is read: iterating anything else (a generator) would use it up
    before the library itself reads it. Such options are not read (nothing chosen), and the
    library's own writes after connecting still land on the fields they set.
    """
    chosen: set[str] = set()
    if not isinstance(socket_options, (list, tuple)):
        return NOTHING
    for entry in socket_options:
        try:
            field = _OPTION_FIELDS.get((int(entry[0]), int(entry[1])))
            value = entry[2]
        except (TypeError, ValueError, IndexError):
            continue  # the library itself will complain about a malformed entry
        if field is None:
            continue
        chosen.add(field)
        if field == "enabled" and not value:
            chosen |= TIMINGS
    return frozenset(chosen)


def keepalive_off(chosen: frozenset[str]) -> frozenset[str]:
    """*chosen* plus the timings, for an application that turned keepalive off."""
    return chosen | {"enabled"} | TIMINGS


_NAMES = ("enabled", "idle", "interval", "count", "user_timeout")
_BY_MASK = tuple(frozenset(n for bit, n in enumerate(_NAMES) if mask >> bit & 1) for mask in range(32))
"""Every possible chosen set, made once: the per-connection read allocates nothing, and the
runtime's decision cache is keyed by these (their hashes are computed once too)."""

_IDLE = getattr(_socket, "TCP_KEEPIDLE", None)
_INTERVAL = getattr(_socket, "TCP_KEEPINTVL", None)
_COUNT = getattr(_socket, "TCP_KEEPCNT", None)
_USER_TIMEOUT = getattr(_socket, "TCP_USER_TIMEOUT", None)
_SOL, _SO_KEEPALIVE = _socket.SOL_SOCKET, _socket.SO_KEEPALIVE
_DEFAULTS: list[tuple[int, int, int]] = []  # (idle, interval, count) of a fresh TCP socket


def _kernel_defaults() -> tuple[int, int, int] | None:
    """What a fresh socket reports for idle/interval/count: the kernel's defaults (read once)."""
    if not _DEFAULTS:
        if _IDLE is None or _INTERVAL is None or _COUNT is None:
            return None
        probe = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            read = probe.getsockopt
            _DEFAULTS.append((read(_TCP, _IDLE), read(_TCP, _INTERVAL), read(_TCP, _COUNT)))
        finally:
            probe.close()
    return _DEFAULTS[0]


def chosen_on_socket(sock: Any) -> frozenset[str]:
    """The fields somebody already set on *sock*, read from the kernel (five getsockopt calls).

    Raises ``OSError`` when the socket cannot be read (closed, not really TCP): the
    caller then leaves it alone.
    """
    return _BY_MASK[chosen_mask(sock)]


def chosen_mask(
    sock: Any,
    _sol: int = _SOL,
    _keepalive: int = _SO_KEEPALIVE,
    _tcp: int = _TCP,
    _user: int | None = _USER_TIMEOUT,
) -> int:
    """:func:`chosen_on_socket` as a bit mask (``_BY_MASK[mask]`` is the set): the connect hook's
    read, which indexes its per-mask decisions with it and so allocates nothing.

    The constants are default arguments: locals, not global lookups, once per connection.
    ``sock.getsockopt`` is looked up at each call, not bound once: a bound METH_VARARGS
    builtin has no vectorcall, and calls through it cost more than the lookup.
    """
    mask = 1 if sock.getsockopt(_sol, _keepalive) else 0
    defaults = _DEFAULTS[0] if _DEFAULTS else _kernel_defaults()
    if defaults is not None:
        if sock.getsockopt(_tcp, _IDLE) != defaults[0]:
            mask |= 2
        if sock.getsockopt(_tcp, _INTERVAL) != defaults[1]:
            mask |= 4
        if sock.getsockopt(_tcp, _COUNT) != defaults[2]:
            mask |= 8
    if _user is not None and sock.getsockopt(_tcp, _user):
        mask |= 16
    return mask


MASK_OF = {chosen: mask for mask, chosen in enumerate(_BY_MASK)}
"""The inverse of ``_BY_MASK``: the mask of a chosen set the socket read can return."""


def fields_written(policy: Policy) -> frozenset[str]:
    """The fields applying *policy* writes (none for a disabled one)."""
    if not policy.enabled:
        return NOTHING
    written = {"enabled"}
    if not policy.keeps_os_timings:
        written |= TIMINGS
    if policy.user_timeout_ms is not None:
        written.add("user_timeout")
    return frozenset(written)
