"""Read a kapatch TOML file (or ``[tool.kapatch]`` of a pyproject.toml) into a settings layer.

```toml
profile = "aws"
user_timeout = "auto"
exclude = ["10.0.0.0/8", "*.internal:5432"]

[redis]            # one table per adapter: socket, urllib3, redis, psycopg, ...
idle = "10s"

[[rule]]           # per-destination rules, first match wins
match = "*.cache.amazonaws.com:6379"
profile = "fast-failover"
```
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from typing import Any

from ._errors import ConfigError
from ._settings import ADAPTER_FIELDS, GLOBAL_SETTINGS, Layer, suggest
from .policy import POLICY_FIELDS
from .rules import Rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 by the version matrix
    import tomli as tomllib

__all__ = ["MAX_FILE_BYTES", "file_on_error", "load_toml", "read_toml"]

_RULE_KEYS = ("match", "skip", "profile", "adapters", *POLICY_FIELDS)


MAX_FILE_BYTES = 1 << 20
"""A config file larger than 1 MiB is refused: no real one comes near, and /dev/zero never ends."""

_FILE_HELP = "a regular TOML file of at most 1 MiB"


def read_toml(path: str, adapter_names: Iterable[str], setting: str = "config") -> Layer:
    """Parse *path*; every unknown key is an error naming the file and the key."""
    data = load_toml(path, setting)
    adapters = set(adapter_names)
    layer = Layer(f"file {path}")
    for key, value in data.items():
        where = f"{path}: {key}"
        if key == "rule":
            _read_rules(layer, value, path, adapters)
        elif key in adapters and (isinstance(value, dict) or key not in GLOBAL_SETTINGS):
            # `inbound = true` turns the opt-in adapter on; `[inbound]` holds its own settings.
            if not isinstance(value, dict):
                raise ConfigError(where, value, f"a table of {key}'s own settings: [{key}]")
            _read_adapter(layer, key, value, path)
        elif key == "config":
            raise ConfigError(where, value, "a config file cannot name another; set KAPATCH_CONFIG instead")
        elif key in GLOBAL_SETTINGS:
            layer.set(key, GLOBAL_SETTINGS[key](value, where), f"file {where}")
        else:
            allowed = [*(k for k in GLOBAL_SETTINGS if k != "config"), "rule", *sorted(adapters)]
            raise ConfigError(
                where, value, "unknown key" + suggest(key, allowed) + f"; keys are {', '.join(allowed)}"
            )
    return layer


def file_on_error(path: str) -> str | None:
    """The file's own ``on_error``, judged before (and whatever) the rest of it says.

    ``None`` when the file does not set it, or cannot be read at all.
    """
    try:
        value = load_toml(path, "config").get("on_error")
        return None if value is None else str(GLOBAL_SETTINGS["on_error"](value, "on_error"))
    except ConfigError:
        return None


def load_toml(path: str, setting: str) -> dict[str, Any]:
    """The file's kapatch table: the whole file, or ``[tool.kapatch]`` of a pyproject.toml."""
    text = _read_text(path, setting)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(setting, path, f"not valid TOML: {error}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(setting, path, "not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as error:  # int() of a number past Python's 4,300-digit limit, say
        reason = "a number with thousands of digits" if "digits" in str(error) else str(error)
        raise ConfigError(setting, path, f"not valid TOML: {reason}") from None
    if os.path.basename(path) == "pyproject.toml":
        tool = data.get("tool", {})
        data = tool.get("kapatch", {}) if isinstance(tool, dict) else {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: tool.kapatch", data, "a table: [tool.kapatch]")
    table: dict[str, Any] = data
    return table


def _read_text(path: str, setting: str) -> str:
    """The file's text, if it is a regular file of bounded size; never blocks.

    A FIFO would block ``open`` until a writer comes, ``/dev/zero`` never ends, and
    opening some devices acts (a watchdog arms, a tape rewinds). So: ``stat`` first, to
    open nothing but a regular file; then ``open`` with ``O_NONBLOCK`` and judge the
    ``fstat`` of the open descriptor, which is what counts if the path changed in between;
    then read at most one byte past the bound.
    """
    try:
        _check_regular(os.stat(path), setting, path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(setting, path, f"cannot read the file: {error.strerror}") from None
    try:
        _check_regular(os.fstat(fd), setting, path)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise ConfigError(setting, path, f"cannot read the file: {error.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise ConfigError(setting, path, f"more than {MAX_FILE_BYTES} bytes; it must be {_FILE_HELP}")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(setting, path, f"not valid TOML: {error}") from None


def _check_regular(info: os.stat_result, setting: str, path: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else _special_kind(info.st_mode)
        raise ConfigError(setting, path, f"not a regular file ({kind}); it must be {_FILE_HELP}")
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(setting, path, f"{info.st_size} bytes; it must be {_FILE_HELP}")


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _read_adapter(layer: Layer, adapter: str, table: dict[str, Any], path: str) -> None:
    for key, value in table.items():
        where = f"{path}: [{adapter}] {key}"
        if key not in ADAPTER_FIELDS:
            raise ConfigError(
                where,
                value,
                "unknown key"
                + suggest(key, ADAPTER_FIELDS)
                + f"; an adapter table takes {', '.join(ADAPTER_FIELDS)}",
            )
        layer.set_adapter(adapter, key, ADAPTER_FIELDS[key](value, where), f"file {where}")


def _read_rules(layer: Layer, rules: object, path: str, adapters: set[str]) -> None:
    if not isinstance(rules, list):
        raise ConfigError(f"{path}: rule", rules, "an array of tables: [[rule]]")
    for number, table in enumerate(rules, start=1):
        where = f"{path}: [[rule]] #{number}"
        if not isinstance(table, dict):
            raise ConfigError(where, table, "a table")
        unknown = [key for key in table if key not in _RULE_KEYS]
        if unknown:
            raise ConfigError(
                f"{where} {unknown[0]}",
                table[unknown[0]],
                "unknown key" + suggest(unknown[0], _RULE_KEYS) + f"; a rule takes {', '.join(_RULE_KEYS)}",
            )
        if "match" not in table:
            raise ConfigError(where, table, 'a rule needs match = "<CIDR, host glob or :port>"')
        fields = {k: v for k, v in table.items() if k not in ("match", "skip", "profile", "adapters")}
        only = table.get("adapters")
        if only is not None and (not isinstance(only, list) or any(n not in adapters for n in only)):
            raise ConfigError(f"{where} adapters", only, f"a list of {', '.join(sorted(adapters))}")
        skip = table.get("skip", False)
        if not isinstance(skip, bool):
            raise ConfigError(f"{where} skip", skip, "true or false")
        layer.rules.append(
            Rule.build(
                table["match"],
                skip=skip,
                profile=table.get("profile"),
                adapters=only,
                source=f"file {where}",
                setting=where,
                **fields,
            )
        )
