"""Assertions several test modules share."""

from __future__ import annotations

from kapatch import ConfigError

# For child interpreters (source, not a function: they must not import kapatch or the tests):
# read(sock) -> the kernel's view of one socket's keepalive options.
READ_SOCKET_SOURCE = """
import socket

def read(sock):
    get = sock.getsockopt
    return {
        "keepalive": get(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "count": get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout_ms": get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }
"""


def assert_one_clear_message(error: ConfigError, setting: str, value: object, *allowed: str) -> None:
    """The message names the setting, the value given and what is allowed, on one line."""
    message = str(error)
    assert message.startswith(f"{setting}={value!r}: "), message
    assert "\n" not in message
    for fragment in allowed:
        assert fragment in message, (fragment, message)
    assert isinstance(error, ValueError)  # callers may catch ValueError
