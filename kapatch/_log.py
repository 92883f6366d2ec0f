"""The ``kapatch`` logger, with ``logging`` imported only when there is something to log.

kapatch is installed at interpreter start when ``KAPATCH_ENABLED=1``; importing
``logging`` there costs ~10 ms (it pulls in traceback, string, threading, weakref),
and a healthy process may never log a line. The configured level is set on the
logger the moment ``logging`` is imported, by whoever imports it, so an application
that configures the ``kapatch`` logger itself still has the last word, as it had
when kapatch set the level at install.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~7 ms at start; type checkers treat this name as True
if TYPE_CHECKING:
    import logging
    from types import ModuleType

__all__ = ["DEBUG", "INFO", "LEVELS", "WARNING", "log", "set_level", "warning"]

LOGGER_NAME = "kapatch"

# logging's own numbers, without importing logging for them.
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger(LOGGER_NAME)


def log(level: int, message: str, *args: object) -> None:
    _logger().log(level, message, *args)


def warning(message: str, *args: object) -> None:
    _logger().warning(message, *args)


def set_level(logging_module: ModuleType, level: int) -> None:
    """Set the kapatch logger's level; the runtime calls it from an import hook on ``logging``."""
    logging_module.getLogger(LOGGER_NAME).setLevel(level)
