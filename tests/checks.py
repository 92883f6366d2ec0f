"""Assertions several test modules share."""

from __future__ import annotations

from kapatch import ConfigError


def assert_one_clear_message(error: ConfigError, setting: str, value: object, *allowed: str) -> None:
    """The message names the setting, the value given and what is allowed, on one line."""
    message = str(error)
    assert message.startswith(f"{setting}={value!r}: "), message
    assert "\n" not in message
    for fragment in allowed:
        assert fragment in message, (fragment, message)
    assert isinstance(error, ValueError)  # callers may catch ValueError
