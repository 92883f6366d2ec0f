"""A compiled policy: the exact socket operations one platform needs, computed once."""

from __future__ import annotations

from ._records import record

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from .policy import Policy

__all__ = ["IoctlOp", "Plan", "SockOpt"]


@record
class SockOpt:
    """One ``setsockopt(level, option, value)`` call."""

    name: str
    """The option's C name, e.g. ``TCP_KEEPIDLE``, for logs and reports."""
    level: int
    option: int
    value: int
    field: str
    """The policy field this carries: enabled, idle, interval, count or user_timeout."""
    optional: bool = False
    """Exists only on newer OS versions; a failure is noted as unsupported, not as an error."""


@record
class IoctlOp:
    """One ``sock.ioctl(control, value)`` call (Windows SIO_KEEPALIVE_VALS)."""

    name: str
    control: int
    value: tuple[int, int, int]
    fields: tuple[str, ...]


@record
class Plan:
    """What applying *policy* means on *platform*."""

    platform: str
    policy: Policy
    ioctls: tuple[IoctlOp, ...] = ()
    setsockopts: tuple[SockOpt, ...] = ()
    unsupported: tuple[str, ...] = ()
    """Policy fields this platform cannot carry, each with the reason."""

    @property
    def is_empty(self) -> bool:
        return not self.ioctls and not self.setsockopts
