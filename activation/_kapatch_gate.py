"""The gate between interpreter start and kapatch: shipped at the top of site-packages.

``kapatch.pth`` (Python < 3.15) imports this module only when ``KAPATCH_ENABLED`` is
on; ``kapatch.start`` (PEP 829, Python 3.15+) calls :func:`start` on every start, so
the check is repeated here. It is a top-level module, not part of the ``kapatch``
package, because importing anything inside ``kapatch`` runs ``kapatch/__init__.py``
(wrapt, config, runtime): far too much for a process that has kapatch switched off.

Nothing here may raise into the interpreter's start: site.py would print a traceback
and carry on (or, for ``SystemExit``, die with "Fatal Python error"). Failures become
one line on stderr and the program runs without kapatch, unless
``KAPATCH_ON_ERROR=raise``, in which case the process stops with exit status 78.

PYTEST_DONT_REWRITE: pytest would otherwise warn that this module, imported at
interpreter start, "cannot be rewritten" (kapatch's pytest plugin puts it in scope).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # collections.abc would cost ~1 ms at start for an annotation
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["EX_CONFIG", "OFF_WORDS", "enabled", "start"]

OFF_WORDS = ("", "0", "false", "no", "off")
"""Values of KAPATCH_ENABLED that keep the gate shut; kept equal to the .pth line's tuple."""

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: distinct from the 1 and 2 an application usually exits with."""


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether KAPATCH_ENABLED asks for activation (an invalid value does: it gets reported)."""
    value = (os.environ if environ is None else environ).get("KAPATCH_ENABLED", "")
    return value.strip().lower() not in OFF_WORDS


_started = False


def start() -> None:
    """Entry point of ``kapatch.pth`` / ``kapatch.start``; never raises."""
    global _started  # noqa: PLW0603 - once per process
    # site.py can read one site-packages twice (a venv's lib64 -> lib symlink on Python 3.11).
    if _started or not enabled():
        return
    _started = True
    try:
        from kapatch._bootstrap import start as bootstrap_start
    except Exception as error:  # e.g. a broken install or missing wrapt: never stop the start
        _import_failed(error)
        return
    bootstrap_start()


def _import_failed(error: Exception) -> None:
    message = f"kapatch: could not be imported ({error!r})"
    if os.environ.get("KAPATCH_ON_ERROR", "").strip().lower() == "raise":
        sys.stderr.write(f"{message}; KAPATCH_ON_ERROR=raise: stopping (exit status {EX_CONFIG})\n")
        sys.stderr.flush()
        os._exit(EX_CONFIG)
    sys.stderr.write(f"{message}; this process runs WITHOUT kapatch\n")
