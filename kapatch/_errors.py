"""The one exception type kapatch raises for bad input."""

from __future__ import annotations

__all__ = ["ConfigError", "shown"]

_MAX_SHOWN = 200  # characters of a value's repr in a message: a 5,000-digit typo stays one short line


class ConfigError(ValueError):
    """A setting has a value kapatch cannot use.

    The message always names the setting, the value given and what is allowed,
    e.g. ``KAPATCH_IDLE='abc': not a duration; use seconds (45), or 45s, 1500ms, 5m, 1h``.
    """

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting}={shown(value)}: {allowed}")


def shown(value: object) -> str:
    """``repr(value)``, shortened, and never raising.

    The value is whatever the caller passed: an int too long for ``repr`` (Python's
    4,300-digit limit), a list nested past the recursion limit, an object whose
    ``__repr__`` raises. The error about it must still be the one ConfigError.
    """
    if isinstance(value, int) and value.bit_length() > 3 * _MAX_SHOWN:
        return f"<int of about {int(value.bit_length() * 0.30103) + 1} digits>"  # repr() would raise
    try:
        text = repr(value)
    except Exception:  # RecursionError, ValueError, or the object's own bug
        return f"<{type(value).__name__} object>"
    if len(text) > _MAX_SHOWN:
        return f"{text[: _MAX_SHOWN - 20]}...({len(text)} characters)"
    return text
