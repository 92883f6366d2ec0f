"""Activation without code: what the ``.pth``/``.start`` gate and ``import kapatch.auto`` run.

Both doors install from the environment and the config file through one function,
:func:`activate`, which does nothing when kapatch is installed already (by the other
door or by an explicit :func:`kapatch.install`): a process is never installed twice.

A configuration error never stops the program by default: it becomes one warning on
the ``kapatch`` logger (stderr at interpreter start, when no handler is configured yet)
and the program runs unpatched. ``KAPATCH_ON_ERROR=raise`` fails fast instead: at
interpreter start the process exits with status 78 (EX_CONFIG) and the message, because
an exception raised from a ``.pth`` line is only printed by site.py (and ``SystemExit``
there dies as "Fatal Python error: init_import_site"); ``import kapatch.auto`` raises the
:class:`ConfigError` to its importer.
"""

from __future__ import annotations

import _thread
import os
import sys

from . import _log
from ._errors import ConfigError

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .config import Config

__all__ = [
    "EX_CONFIG",
    "GATE_MODULE",
    "GATE_VARIABLE",
    "PTH_NAME",
    "START_NAME",
    "activate",
    "auto",
    "gate_open",
    "start",
]

EX_CONFIG = 78
"""Exit status at interpreter start with ``KAPATCH_ON_ERROR=raise`` (sysexits.h EX_CONFIG)."""

GATE_VARIABLE = "KAPATCH_ENABLED"
PTH_NAME = "kapatch.pth"
START_NAME = "kapatch.start"
GATE_MODULE = "_kapatch_gate.py"
_OFF_WORDS = ("", "0", "false", "no", "off")  # the same tuple as in kapatch.pth and _kapatch_gate

_lock = _thread.allocate_lock()
_reported: set[str] = set()


def gate_open(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``KAPATCH_ENABLED`` opens the interpreter-start gate."""
    value = (os.environ if environ is None else environ).get(GATE_VARIABLE, "")
    return value.strip().lower() not in _OFF_WORDS


def activate(environ: Mapping[str, str] | None = None) -> tuple[Config, bool]:
    """Install from environment + config file unless installed already; raises ConfigError.

    Returns the configuration in force and whether this call installed it.
    """
    from . import runtime
    from .config import load_config

    with _lock:
        current = runtime.current_config()
        if current is not None:
            return current, False
        config = load_config(environ=environ)
        runtime.install_config(config)
        return config, True


def start() -> None:
    """Interpreter start (via ``_kapatch_gate``): never raises; exits 78 only when asked to."""
    try:
        activate()
    except Exception as error:
        _report(error, at_startup=True)
    if os.environ.get("KAPATCH__AUDIT"):  # kapatch run --audit
        from ._audit import arm_from_environment

        arm_from_environment()


def auto() -> None:
    """``import kapatch.auto``: install; warn and carry on, or raise with KAPATCH_ON_ERROR=raise.

    When this call turned kapatch on and ``KAPATCH_ENABLED`` is unset, it sets
    ``KAPATCH_ENABLED=1`` in ``os.environ`` so that Python processes this one starts
    (subprocess, multiprocessing spawn) are patched the same way through ``kapatch.pth``.
    """
    try:
        config, installed_now = activate()
    except Exception as error:
        _report(error, at_startup=False)
        return
    if installed_now and config.enabled and GATE_VARIABLE not in os.environ:
        os.environ[GATE_VARIABLE] = "1"


def _report(error: Exception, *, at_startup: bool) -> None:
    message = str(error) if isinstance(error, ConfigError) else f"activation failed: {error!r}"
    if _wants_raise():
        if not at_startup:
            raise error
        sys.stderr.write(
            f"kapatch: {message}\nkapatch: KAPATCH_ON_ERROR=raise: stopping before the program starts "
            f"(exit status {EX_CONFIG})\n"
        )
        sys.stderr.flush()
        os._exit(EX_CONFIG)  # SystemExit from a .pth line is a fatal error with a traceback
    with _lock:
        if message in _reported:  # the .pth line already said it; import kapatch.auto stays quiet
            return
        _reported.add(message)
    _log.warning(
        "kapatch: %s; this process runs WITHOUT kapatch (KAPATCH_ON_ERROR=raise stops it instead)",
        message,
    )


def _wants_raise() -> bool:
    """``on_error`` when the configuration could not be merged: the variable, else the file.

    The file's own ``on_error`` is read on its own, before the rest of the file is judged:
    a file that says ``on_error = "raise"`` and holds a bad value asked to fail fast.
    """
    raw = os.environ.get("KAPATCH_ON_ERROR", "").strip().lower()
    if raw:
        return raw == "raise"
    path = os.environ.get("KAPATCH_CONFIG", "").strip()
    if not path:
        return False
    try:
        from ._toml import file_on_error

        return file_on_error(path) == "raise"
    except Exception:  # a broken install of tomli, say: the warning is still owed
        return False
