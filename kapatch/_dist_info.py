"""Entry points and versions straight from the installed distributions' ``*.dist-info``.

``importlib.metadata`` gives the same answers, but importing it costs ~40 ms at
interpreter start on the reference machine (email, zipfile, csv, pathlib), and this
runs at start when ``KAPATCH_ENABLED=1``. The ``sys.path`` directories are listed
once per process; ``entry_points.txt`` is read only for the group asked for, first
distribution on ``sys.path`` first, as importlib.metadata does. A test holds both to
the same results.
"""

from __future__ import annotations

import os
import sys

__all__ = ["entry_points", "version"]

_SUFFIXES = (".dist-info", ".egg-info")


def _normalise(name: str) -> str:
    """PEP 503: runs of ``-``, ``_`` and ``.`` become one ``-``, lower case (without re: ~4 ms)."""
    out = name.replace("_", "-").replace(".", "-").lower()
    while "--" in out:  # str methods, not a loop per character: this runs per distribution at start
        out = out.replace("--", "-")
    return out


_found: tuple[tuple[str, str, str | None], ...] | None = None
_by_name: dict[str, tuple[str, str | None]] | None = None


# The standard library's own directories: pip never installs a distribution there, and
# they are the longest listings on sys.path (~280 entries), read at interpreter start.
_STDLIB = os.path.dirname(getattr(os, "__file__", None) or "")  # none in a frozen application
_STDLIB_DIRECTORIES = frozenset((_STDLIB, os.path.join(_STDLIB, "lib-dynload")) if _STDLIB else ())


def _distributions() -> tuple[tuple[str, str, str | None], ...]:
    """(directory, name as written, version) of every distribution, in sys.path order; listed once."""
    global _found  # noqa: PLW0603 - a once-per-process cache
    if _found is None:
        _found = _list_distributions()
    return _found


def _list_distributions() -> tuple[tuple[str, str, str | None], ...]:
    # Runs at interpreter start: names are only split here (normalised on a version query).
    found = []
    for directory in sys.path:
        if directory in _STDLIB_DIRECTORIES:
            continue
        try:
            names = os.listdir(directory or ".")
        except OSError:
            continue
        prefix = (directory or ".") + os.sep
        for entry in sorted(entry for entry in names if entry.endswith(_SUFFIXES)):
            name, _, version = entry.rpartition(".")[0].partition("-")
            if entry.endswith(".egg-info"):
                version = version.partition("-")[0]  # setup.py's egg-info: name-1.2.3-py3.10
            found.append((prefix + entry, name, version or None))
    return tuple(found)


def version(distribution: str) -> str | None:
    """The installed version of *distribution* (the first on sys.path), or ``None``."""
    global _by_name  # noqa: PLW0603 - a once-per-process cache
    if _by_name is None:
        by_name: dict[str, tuple[str, str | None]] = {}
        for path, name, found in _distributions():
            by_name.setdefault(_normalise(name), (path, found))
        _by_name = by_name
    path, found = _by_name.get(_normalise(distribution), ("", None))
    if not path:
        return None
    return found if found is not None else _version_from_metadata(path)


def _version_from_metadata(path: str) -> str | None:
    # An egg-info without the version in its name (old develop installs): read PKG-INFO.
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, filename), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            continue
    return None


def entry_points(group: str) -> dict[str, str]:
    """``name -> "module:attr"`` for *group*; the first distribution on sys.path wins a name."""
    found: dict[str, str] = {}
    header = f"[{group}]"
    wanted = header.encode()
    for path, _name, _version in _distributions():
        data = _read_bytes(path + _ENTRY_POINTS)
        if data is not None and wanted in data:  # bytes, decoded only where the group is
            for key, value in _section(data.decode("utf-8"), header):
                found.setdefault(key, value)
    return found


_ENTRY_POINTS = os.sep + "entry_points.txt"
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _read_bytes(path: str) -> bytes | None:
    """The file's bytes, or ``None`` where it cannot be read (most distributions have none).

    ``os.access``, then ``os.open``/``os.read``, rather than ``open()``: this runs once per
    installed distribution at interpreter start, and a buffered file object (or the
    exception built for a missing file, with its path) costs several times the calls.
    """
    if not os.access(path, os.R_OK):  # a bool, not an exception: the common case is "none"
        return None
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _section(text: str, header: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            inside = line == header
            continue
        if inside and "=" in line:
            key, _, value = line.partition("=")
            entries.append((key.strip(), value.strip()))
    return entries
