"""Parse human durations (``45``, ``45s``, ``1500ms``, ``5m``, ``1h``) into milliseconds."""

from __future__ import annotations

from ._errors import ConfigError

__all__ = ["DURATION_HELP", "parse_duration_ms"]

DURATION_HELP = "a duration: seconds (45), or with a unit: 45s, 1500ms, 5m, 1h"

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_UNITS = ("ms", "s", "m", "h")  # "ms" first: "5ms" also ends in "s" and in "m"-then-"s"
_DIGITS = frozenset("0123456789")  # ASCII only: str.isdigit() takes any Unicode digit
_MAX_DIGITS = 30  # per part of a written number; more is a typo, not a duration
_MAX_NUMBER = 10**_MAX_DIGITS  # the same bound for an int argument, checked before str() of it


def parse_duration_ms(value: object, setting: str) -> int:
    """Return *value* as whole milliseconds; bare numbers are seconds.

    Fractions of a millisecond are refused rather than rounded: a policy should
    mean exactly what it says. Arithmetic is exact (integers scaled by the decimal
    places), so ``1.001s`` is 1001 ms and a huge number is simply out of range,
    never a float overflow. Parsed by hand, not with ``re``: this runs at interpreter
    start, where importing ``re`` (and ``enum``) would cost ~4 ms.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a duration
        raise ConfigError(setting, value, DURATION_HELP)
    if isinstance(value, int):
        if not -_MAX_NUMBER < value < _MAX_NUMBER:  # str() of 10**5000 is a ValueError
            raise ConfigError(setting, value, DURATION_HELP)
        text, unit = str(value), "s"
    elif isinstance(value, float):
        if value - value != 0:  # inf and nan (math.isfinite, without math's import at start)
            raise ConfigError(setting, value, DURATION_HELP)
        # repr() is the shortest decimal that round-trips: TOML's 4.1 means 4.1, not 4.0999...
        text, unit = repr(value), "s"
    elif isinstance(value, str):
        text, unit = _split_unit(value.strip())
        if any(len(part) > _MAX_DIGITS for part in text.lstrip("+-").partition(".")[::2]):
            raise ConfigError(setting, value, DURATION_HELP)
    else:
        raise ConfigError(setting, value, DURATION_HELP)
    number = _decimal(text)
    if number is None:  # not a plain decimal, e.g. "abc", "1e3", or a float repr "1e+308"
        raise ConfigError(setting, value, DURATION_HELP)
    sign, whole, decimals = number
    if sign == "-" and (whole + decimals).strip("0"):
        raise ConfigError(setting, value, "must not be negative; " + DURATION_HELP)
    scaled = int(whole + decimals) * _UNIT_MS[unit]
    millis, remainder = divmod(scaled, 10 ** len(decimals))
    millis = int(millis)  # 10 ** n is typed int | float
    if remainder:
        raise ConfigError(setting, value, "must be a whole number of milliseconds")
    return millis


def _split_unit(text: str) -> tuple[str, str]:
    """``"1500 MS"`` -> ``("1500", "ms")``; no unit means seconds."""
    lowered = text.lower()
    for unit in _UNITS:
        if lowered.endswith(unit):
            return text[: -len(unit)].rstrip(), unit
    return text, "s"


def _decimal(text: str) -> tuple[str, str, str] | None:
    """``"-1.50"`` -> ``("-", "1", "50")``: an optional sign, ASCII digits, optional fraction."""
    sign = text[:1] if text[:1] in ("+", "-") else ""
    whole, dot, decimals = text[len(sign) :].partition(".")
    if not whole or not _DIGITS.issuperset(whole):
        return None
    if dot and (not decimals or not _DIGITS.issuperset(decimals)):
        return None
    return sign, whole, decimals
