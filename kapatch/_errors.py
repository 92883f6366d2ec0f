"""The one exception type kapatch raises for bad input."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A setting has a value kapatch cannot use.

    The message always names the setting, the value given and what is allowed,
    e.g. ``KAPATCH_IDLE='abc': not a duration; use seconds (45), or 45s, 1500ms, 5m, 1h``.
    """

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting}={value!r}: {allowed}")
