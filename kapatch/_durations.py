"""Parse human durations (``45``, ``45s``, ``1500ms``, ``5m``, ``1h``) into milliseconds."""

from __future__ import annotations

import math
import re

from ._errors import ConfigError

__all__ = ["DURATION_HELP", "parse_duration_ms"]

DURATION_HELP = "a duration: seconds (45), or with a unit: 45s, 1500ms, 5m, 1h"

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
# ASCII digits only (\d would take any Unicode digit); the sign is matched so that a
# negative value gets its own message instead of the generic one.
_DURATION = re.compile(r"\s*([-+]?[0-9]{1,30}(?:\.[0-9]{1,30})?)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_DECIMAL = re.compile(r"([-+]?)([0-9]+)(?:\.([0-9]+))?")


def parse_duration_ms(value: object, setting: str) -> int:
    """Return *value* as whole milliseconds; bare numbers are seconds.

    Fractions of a millisecond are refused rather than rounded: a policy should
    mean exactly what it says. Arithmetic is exact (integers scaled by the decimal
    places), so ``1.001s`` is 1001 ms and a huge number is simply out of range,
    never a float overflow.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a duration
        raise ConfigError(setting, value, DURATION_HELP)
    if isinstance(value, int):
        text, unit = str(value), "s"
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(setting, value, DURATION_HELP)
        # repr() is the shortest decimal that round-trips: TOML's 4.1 means 4.1, not 4.0999...
        text, unit = repr(value), "s"
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ConfigError(setting, value, DURATION_HELP)
        text, unit = match.group(1), (match.group(2) or "s").lower()
    else:
        raise ConfigError(setting, value, DURATION_HELP)
    number = _DECIMAL.fullmatch(text)
    if number is None:  # e.g. a float whose repr has an exponent: 1e+308
        raise ConfigError(setting, value, DURATION_HELP)
    sign, whole, decimals = number.group(1), number.group(2), number.group(3) or ""
    if sign == "-" and (whole + decimals).strip("0"):
        raise ConfigError(setting, value, "must not be negative; " + DURATION_HELP)
    scaled = int(whole + decimals) * _UNIT_MS[unit]
    millis, remainder = divmod(scaled, 10 ** len(decimals))
    millis = int(millis)
    if remainder:
        raise ConfigError(setting, value, "must be a whole number of milliseconds")
    return millis
