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
import sys
from collections.abc import Iterable
from typing import Any

from ._errors import ConfigError
from ._settings import ADAPTER_FIELDS, GLOBAL_SETTINGS, Layer, suggest
from .rules import Rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 by the version matrix
    import tomli as tomllib

__all__ = ["read_toml"]

_RULE_KEYS = ("match", "skip", "profile", "adapters", "idle", "interval", "count",
              "user_timeout", "enabled")  # fmt: skip


def read_toml(path: str, adapter_names: Iterable[str], setting: str = "config") -> Layer:
    """Parse *path*; every unknown key is an error naming the file and the key."""
    try:
        with open(path, encoding="utf-8") as file:
            data = tomllib.loads(file.read())
    except OSError as error:
        raise ConfigError(setting, path, f"cannot read the file: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(setting, path, f"not valid TOML: {error}") from None
    if os.path.basename(path) == "pyproject.toml":
        tool = data.get("tool", {})
        data = tool.get("kapatch", {}) if isinstance(tool, dict) else {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: tool.kapatch", data, "a table: [tool.kapatch]")
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
