"""Parse human durations (``45``, ``45s``, ``1500ms``, ``5m``, ``1h``) into milliseconds."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from ._errors import ConfigError

__all__ = ["DURATION_HELP", "parse_duration_ms"]

DURATION_HELP = "a duration: seconds (45), or with a unit: 45s, 1500ms, 5m, 1h"

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
# ASCII digits only (\d would take any Unicode digit); the sign is matched so that a
# negative value gets its own message instead of the generic one.
_DURATION = re.compile(r"\s*([-+]?[0-9]{1,30}(?:\.[0-9]{1,30})?)\s*(ms|s|m|h)?\s*", re.IGNORECASE)


def parse_duration_ms(value: object, setting: str) -> int:
    """Return *value* as whole milliseconds; bare numbers are seconds.

    Fractions of a millisecond are refused rather than rounded: a policy should
    mean exactly what it says. Arithmetic is exact (Fraction), so ``1.001s`` is
    1001 ms and a huge number is simply out of range, never a float overflow.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a duration
        raise ConfigError(setting, value, DURATION_HELP)
    if isinstance(value, int):
        number, unit = Fraction(value), "s"
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(setting, value, DURATION_HELP)
        # repr() is the shortest decimal that round-trips: TOML's 4.1 means 4.1, not 4.0999...
        number, unit = Fraction(repr(value)), "s"
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ConfigError(setting, value, DURATION_HELP)
        number, unit = Fraction(match.group(1)), (match.group(2) or "s").lower()
    else:
        raise ConfigError(setting, value, DURATION_HELP)
    if number < 0:
        raise ConfigError(setting, value, "must not be negative; " + DURATION_HELP)
    millis = number * _UNIT_MS[unit]
    if millis.denominator != 1:
        raise ConfigError(setting, value, "must be a whole number of milliseconds")
    return int(millis)
