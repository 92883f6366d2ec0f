"""Activation without code: what the ``.pth``/``.start`` gate and ``import kapatch.auto`` run.

Both doors install from the environment and the config file through one function,
:func:`activate`, which does nothing when kapatch is installed already (by the other
door or by an explicit :func:`kapatch.install`): a process is never installed twice.

At interpreter start the configuration is read and validated at once (a bad setting is
reported before the program runs), but the runtime (the connect path, the adapters'
interface, ``_socket``: about half of an enabled start) is installed when the program
first imports a module an adapter waits for (a client library), or the runtime itself
(``kapatch.status()``, ``kapatch.install()``, ...). ``socket`` and ``asyncio``, which
most programs import whether or not they connect, only get stand-ins at their import:
the runtime installs at the first call to one, the first ``connect``, ``connect_ex`` or
``listen``, or the first event loop to run (``kapatch._first_use``). Either way before any
connection can be made, and never in a program that makes none.

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
    from types import ModuleType

    from .config import Config

__all__ = [
    "EX_CONFIG",
    "GATE_MODULE",
    "GATE_VARIABLE",
    "PTH_NAME",
    "START_NAME",
    "activate",
    "auto",
    "complete_deferred",
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

_lock = _thread.RLock()  # re-entered: installing imports the runtime, which calls complete_deferred
_reported: set[str] = set()
_deferred: list[Config] = []
"""The configuration read at interpreter start, until the runtime is installed with it."""


def gate_open(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``KAPATCH_ENABLED`` opens the interpreter-start gate."""
    value = (os.environ if environ is None else environ).get(GATE_VARIABLE, "")
    return value.strip().lower() not in _OFF_WORDS


def activate(environ: Mapping[str, str] | None = None, *, defer: bool = False) -> tuple[Config, bool]:
    """Install from environment + config file unless installed already; raises ConfigError.

    With *defer* (interpreter start), the configuration is read and validated now and the
    runtime installed when the program first imports a module an adapter waits for, or first
    uses socket or asyncio (or loads the runtime itself). Returns the configuration in force
    and whether this call installed it.
    """
    from ._registry import FIRST_USE, start_triggers
    from .config import load_config

    with _lock:
        current = _installed_config()
        if current is not None:
            return current, False
        config = load_config(environ=environ)
        triggers = start_triggers(config) if defer else None
        if triggers is None:  # asked for now, or a third party's adapter (enabled at install)
            from . import runtime

            runtime.install_config(config)
            return config, True
        _deferred.append(config)
    from ._import_hooks import HOOKS

    for name in triggers:  # an imported one calls back at once
        HOOKS.when_imported(name, _on_first_use_trigger if name in FIRST_USE else _on_trigger)
    return config, True


def _installed_config() -> Config | None:
    """The configuration in force, deferred or installed, without importing the runtime."""
    if _deferred:
        return _deferred[0]
    runtime = sys.modules.get("kapatch.runtime")
    return None if runtime is None else runtime.current_config()


def _on_trigger(_: object) -> None:
    complete_deferred()


def _on_first_use_trigger(module: ModuleType) -> None:
    """socket or asyncio imported: stand-ins install the runtime at their first call."""
    if not _deferred:
        return
    try:
        from ._first_use import place

        with _lock:
            if _deferred:
                place(module.__name__, _finish_at_first_use)
    except Exception:  # never in the way of the import: install now instead
        complete_deferred()


def _finish_at_first_use() -> None:
    """A stand-in's call: install if it still waits; return once no install is under way."""
    complete_deferred()
    with _lock:  # a thread installing holds it: its hooks are in place when it lets go
        pass


def complete_deferred() -> None:
    """Install the configuration read at interpreter start, if it still waits; never raises.

    Called by the trigger modules' import hooks, and at the end of ``kapatch.runtime``'s own
    import: whoever loads the runtime first finds kapatch installed.
    """
    if not _deferred:  # the common case once installed: no lock, no import
        return
    try:
        from . import runtime  # outside the lock: its import ends by calling back here

        with _lock:
            if not _deferred:
                return
            # Taken off first: installing loads adapters, whose imports may fire another trigger.
            config = _deferred.pop()
            runtime.install_config(config)
    except Exception as error:  # an import hook must not break the program's import
        _deferred.clear()
        _log.warning("kapatch: activation failed: %r; this process runs WITHOUT kapatch", error)
    finally:  # installed or failed: the stand-ins the hooks did not replace go
        _retire_stand_ins()


def _retire_stand_ins() -> None:
    first_use = sys.modules.get("kapatch._first_use")  # loaded only where stand-ins were placed
    if first_use is not None:
        first_use.retire()


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603 - a lock another thread held at fork time is never released
    _lock = _thread.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def start() -> None:
    """Interpreter start (via ``_kapatch_gate``): never raises; exits 78 only when asked to."""
    try:
        activate(defer=True)
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
