"""The keepalive policy: a frozen, validated value object."""

from __future__ import annotations

from ._durations import DURATION_HELP, parse_duration_ms
from ._errors import ConfigError, shown
from ._records import fields, record, replace

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import ClassVar, Literal, TypeAlias

__all__ = [
    "MAX_COUNT",
    "MAX_IDLE_S",
    "MAX_INTERVAL_S",
    "MAX_POOL_DURATION_MS",
    "MAX_USER_TIMEOUT_MS",
    "POLICY_FIELDS",
    "Mode",
    "Policy",
    "UserTimeout",
    "parse_policy_fields",
    "validate_field",
]

# Linux limits (include/net/tcp.h: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT).
# They are also the tightest of the platforms kapatch maps to, so one policy is valid everywhere.
MAX_IDLE_S = 32767
MAX_INTERVAL_S = 32767
MAX_COUNT = 127
# The kernel keeps TCP_USER_TIMEOUT as u32 ms, but setsockopt() from Python passes a C int.
MAX_USER_TIMEOUT_MS = 2**31 - 1

UserTimeout: TypeAlias = "int | Literal['auto', 'off']"
"""Milliseconds, ``"auto"`` (idle + interval * count) or ``"off"`` (the kernel's retransmission limit)."""

POLICY_FIELDS = (
    "enabled", "idle", "interval", "count", "user_timeout", "heartbeat", "heartbeat_timeout", "max_idle",
)  # fmt: skip
# An application-level proof or an idle limit beyond a week is a typo, not a policy.
MAX_POOL_DURATION_MS = 7 * 24 * 3600 * 1000
# Linux's own defaults (tcp_keepalive_intvl 75 s, tcp_keepalive_probes 9): the heartbeat
# deadline of a policy that keeps the OS timings.
_OS_INTERVAL_TIMES_COUNT_S = 75 * 9


class Mode(str):
    """Whose settings win on a connection the application configured itself.

    ``Mode.RESPECT`` (``"respect"``): an option the application set explicitly wins;
    a library's own default does not. ``Mode.OVERRIDE`` (``"override"``): the policy
    wins, always. ``Mode("respect") is Mode.RESPECT``; a mode equals its string.

    A ``str`` with exactly two instances rather than an ``enum.Enum``: importing
    ``enum`` costs ~3 ms at interpreter start, where the mode is read.
    """

    __slots__ = ()
    RESPECT: ClassVar[Mode]
    OVERRIDE: ClassVar[Mode]
    _members: ClassVar[dict[str, Mode]] = {}

    def __new__(cls, value: object) -> Mode:
        member = cls._members.get(value) if isinstance(value, str) else None
        if member is None:
            raise ValueError(f"{shown(value)} is not a valid Mode; modes are {', '.join(cls._members)}")
        return member

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<Mode.{self.upper()}: {str.__repr__(self)}>"

    def __reduce__(self) -> tuple[type[Mode], tuple[str]]:
        return Mode, (self.value,)  # unpickles to the same member


for _name in ("respect", "override"):
    Mode._members[_name] = str.__new__(Mode, _name)
Mode.RESPECT = Mode._members["respect"]
Mode.OVERRIDE = Mode._members["override"]


@record
class Policy:
    """How a TCP connection notices a dead peer.

    A peer that vanished is detected ``idle + interval * count`` seconds after the
    last packet when the connection is idle, and ``user_timeout`` after the first
    unacknowledged send when data is in flight.

    ``idle``, ``interval`` and ``count`` of ``None`` keep the operating system's own
    timings (SO_KEEPALIVE only). Build from strings with :meth:`parse` or :meth:`evolve`.
    """

    idle: int | None = 60
    """Seconds of silence before the first keepalive probe (TCP_KEEPIDLE)."""
    interval: int | None = 10
    """Seconds between unanswered probes (TCP_KEEPINTVL)."""
    count: int | None = 5
    """Unanswered probes before the connection is declared dead (TCP_KEEPCNT)."""
    user_timeout: UserTimeout = "auto"
    """Milliseconds sent data may stay unacknowledged (TCP_USER_TIMEOUT), ``"auto"`` or ``"off"``."""
    enabled: bool = True
    """``False`` leaves connections exactly as the application made them."""
    heartbeat: int | None = None
    """Milliseconds a pooled connection may sit idle before the library's own application-level
    check (redis PING, psycopg_pool's check, gRPC PING) proves the peer process answers; ``None``: off."""
    heartbeat_timeout: int | Literal["auto"] = "auto"
    """Milliseconds the heartbeat's reply may take; ``"auto"``: interval * count."""
    max_idle: int | None = None
    """Milliseconds a pooled connection may sit idle before it is discarded instead of reused."""

    def __post_init__(self) -> None:
        for name in POLICY_FIELDS:
            validate_field(name, getattr(self, name), name)
        timings = (self.idle, self.interval, self.count)
        if None in timings and timings != (None, None, None):
            raise ConfigError(
                "idle/interval/count",
                timings,
                "give all three, or none of them to keep the OS timings",
            )
        auto = self._auto_user_timeout_ms()
        if self.user_timeout == "auto" and auto is not None and auto > MAX_USER_TIMEOUT_MS:
            raise ConfigError(
                "user_timeout",
                "auto",
                f"idle + interval * count = {auto} ms exceeds {MAX_USER_TIMEOUT_MS} ms; "
                "set user_timeout explicitly or shorten the policy",
            )

    @classmethod
    def parse(cls, values: Mapping[str, object], *, setting_name: Callable[[str], str] = str) -> Policy:
        """Build a policy from raw values (``"45s"``, ``"1500ms"``, ``"auto"``, ``"true"``)."""
        given: object = values  # typed as a Mapping; checked, as callers may pass anything
        if not hasattr(given, "items") or isinstance(given, (str, bytes)):
            raise ConfigError("values", values, 'a mapping of policy fields: {"idle": "45s"}')
        return cls(**parse_policy_fields(values, setting_name=setting_name))  # type: ignore[arg-type]

    def evolve(self, **changes: object) -> Policy:
        """Return a copy with *changes*, parsed like :meth:`parse`."""
        return replace(self, **parse_policy_fields(changes))

    @property
    def keeps_os_timings(self) -> bool:
        """True when only SO_KEEPALIVE is set and the OS chooses the timings."""
        return self.idle is None

    @property
    def user_timeout_ms(self) -> int | None:
        """The TCP_USER_TIMEOUT to set, in milliseconds, or ``None`` to leave it alone."""
        if self.user_timeout == "off":
            return None
        if self.user_timeout == "auto":
            return self._auto_user_timeout_ms()
        return self.user_timeout

    @property
    def detection_bound_s(self) -> int | None:
        """Seconds from the last packet to the error on an idle connection: idle + interval * count."""
        if self.idle is None or self.interval is None or self.count is None:
            return None
        return self.idle + self.interval * self.count

    @property
    def heartbeat_s(self) -> float | None:
        """The heartbeat interval in seconds, or ``None`` when off."""
        return None if self.heartbeat is None else self.heartbeat / 1000

    @property
    def heartbeat_timeout_s(self) -> float:
        """The heartbeat's reply deadline in seconds (``"auto"``: interval * count)."""
        if self.heartbeat_timeout != "auto":
            return self.heartbeat_timeout / 1000
        if self.interval is None or self.count is None:
            return float(_OS_INTERVAL_TIMES_COUNT_S)
        return float(self.interval * self.count)

    @property
    def max_idle_s(self) -> float | None:
        """The pooled-connection idle limit in seconds, or ``None`` when off."""
        return None if self.max_idle is None else self.max_idle / 1000

    def _auto_user_timeout_ms(self) -> int | None:
        bound = self.detection_bound_s
        return None if bound is None else bound * 1000

    def describe(self) -> str:
        """One line for logs and the CLI, e.g. ``idle 60s, interval 10s, count 5, user timeout 110000ms``."""
        if not self.enabled:
            return "disabled"
        if self.keeps_os_timings:
            timings = "OS keepalive timings"
        else:
            timings = f"idle {self.idle}s, interval {self.interval}s, count {self.count}"
        timeout = self.user_timeout_ms
        shown = "off" if timeout is None else f"{timeout}ms"
        if self.user_timeout == "auto" and timeout is not None:
            shown += " (auto)"
        line = f"{timings}, user timeout {shown}"
        if self.heartbeat is not None:
            auto = " (auto)" if self.heartbeat_timeout == "auto" else ""
            deadline = f"{self.heartbeat_timeout_s:g}s{auto}"
            line += f", heartbeat {_seconds(self.heartbeat)} with reply within {deadline}"
        if self.max_idle is not None:
            line += f", max idle {_seconds(self.max_idle)}"
        return line


def _seconds(millis: int) -> str:
    return f"{millis / 1000:g}s"


_BOOL_WORDS = {
    "1": True, "true": True, "yes": True, "on": True,
    "0": False, "false": False, "no": False, "off": False,
}  # fmt: skip


def parse_bool(value: object, setting: str) -> bool:
    """``true/false, 1/0, yes/no, on/off`` (any case) or a real bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ConfigError(setting, value, "a boolean: true/false, 1/0, yes/no, on/off")


def _whole_seconds(value: object, setting: str, limit: int) -> int | None:
    if value is None:
        return None
    millis = parse_duration_ms(value, setting)
    allowed = f"1s to {limit}s, in whole seconds (the kernel counts keepalive time in seconds)"
    if millis % 1000:
        raise ConfigError(setting, value, allowed)
    seconds = millis // 1000
    if not 1 <= seconds <= limit:
        raise ConfigError(setting, value, allowed)
    return seconds


_MAX_COUNT_DIGITS = 30  # "0005" is 5; thirty digits is no count, only a typo


def _count(value: object, setting: str) -> int | None:
    if value is None:
        return None
    allowed = f"a whole number of probes from 1 to {MAX_COUNT}"
    if isinstance(value, bool):
        raise ConfigError(setting, value, allowed)
    if isinstance(value, str):
        text = value.strip()
        # isdecimal alone takes any Unicode digit; the length bound comes before int(), which
        # refuses more than 4,300 digits with a ValueError of its own
        if not (text.isascii() and text.isdecimal()) or len(text) > _MAX_COUNT_DIGITS:
            raise ConfigError(setting, value, allowed)
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise ConfigError(setting, value, allowed)
    if not 1 <= number <= MAX_COUNT:
        raise ConfigError(setting, value, allowed)
    return number


def _user_timeout(value: object, setting: str) -> UserTimeout:
    allowed = f'"auto", "off", or {DURATION_HELP}, from 1ms to {MAX_USER_TIMEOUT_MS}ms'
    if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
        return value.strip().lower()  # type: ignore[return-value]
    try:
        millis = parse_duration_ms(value, setting)
    except ConfigError:
        raise ConfigError(setting, value, allowed) from None
    if not 1 <= millis <= MAX_USER_TIMEOUT_MS:
        raise ConfigError(setting, value, allowed + ' (use "off" for no user timeout)')
    return millis


def _pool_duration(value: object, setting: str, *, auto: bool = False) -> int | str | None:
    word = "auto" if auto else "off"
    allowed = f'"{word}", or {DURATION_HELP}, from 1ms to {MAX_POOL_DURATION_MS // 1000}s'
    if value is None and not auto:
        return None
    if isinstance(value, str) and value.strip().lower() == word:
        return None if word == "off" else "auto"
    try:
        millis = parse_duration_ms(value, setting)
    except ConfigError:
        raise ConfigError(setting, value, allowed) from None
    if not 1 <= millis <= MAX_POOL_DURATION_MS:
        raise ConfigError(setting, value, allowed)
    return millis


_PARSERS: dict[str, Callable[[object, str], object]] = {
    "enabled": parse_bool,
    "idle": lambda value, setting: _whole_seconds(value, setting, MAX_IDLE_S),
    "interval": lambda value, setting: _whole_seconds(value, setting, MAX_INTERVAL_S),
    "count": _count,
    "user_timeout": _user_timeout,
    "heartbeat": _pool_duration,
    "heartbeat_timeout": lambda value, setting: _pool_duration(value, setting, auto=True),
    "max_idle": _pool_duration,
}


_RANGES: dict[str, tuple[int, int]] = {
    "idle": (1, MAX_IDLE_S),
    "interval": (1, MAX_INTERVAL_S),
    "count": (1, MAX_COUNT),
    "user_timeout": (1, MAX_USER_TIMEOUT_MS),
    "heartbeat": (1, MAX_POOL_DURATION_MS),
    "heartbeat_timeout": (1, MAX_POOL_DURATION_MS),
    "max_idle": (1, MAX_POOL_DURATION_MS),
}
_UNITS = {"idle": "s", "interval": "s", "count": " probes"}  # the rest are milliseconds


def validate_field(name: str, value: object, setting: str) -> None:
    """Constructor check of canonical values; strings go through Policy.parse()."""
    if name not in POLICY_FIELDS:
        raise ConfigError(setting, value, f"not a policy field; fields are {', '.join(POLICY_FIELDS)}")
    if name == "enabled":
        if not isinstance(value, bool):
            raise ConfigError(setting, value, "a bool")
        return
    if value is None and name not in ("user_timeout", "heartbeat_timeout"):
        return
    if value in {"user_timeout": ("auto", "off"), "heartbeat_timeout": ("auto",)}.get(name, ()):
        return
    low, high = _RANGES[name]
    allowed = f"an int from {low} to {high}{_UNITS.get(name, 'ms')}"
    if name == "user_timeout":
        allowed += ', "auto" or "off"'
    elif name == "heartbeat_timeout":
        allowed += ' or "auto"'
    elif name in ("heartbeat", "max_idle"):
        allowed += ", or None for off"
    else:
        allowed += ", or None for the OS timings"
    if isinstance(value, str):
        allowed += " (use Policy.parse() to read strings such as '45s')"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(setting, value, allowed)


def parse_policy_fields(
    values: Mapping[str, object], *, setting_name: Callable[[str], str] = str
) -> dict[str, object]:
    """Parse raw policy values into canonical ones, naming each setting in errors."""
    known = fields(Policy)
    parsed: dict[str, object] = {}
    for name, value in values.items():
        if name not in known:
            where = setting_name(str(name)) or repr(name)  # {"": 5} still names something
            raise ConfigError(where, value, f"not a policy field; fields are {', '.join(POLICY_FIELDS)}")
        parsed[name] = _PARSERS[name](value, setting_name(name))
    return parsed
