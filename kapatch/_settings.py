"""The table of settings every source (arguments, environment, TOML) shares, with their parsers.

A source turns its raw text into a :class:`Layer` of canonical values, each tagged
with where it came from, so errors name the exact variable or key and ``kapatch
doctor`` can say where every effective value came from.
"""

from __future__ import annotations

from ._errors import ConfigError
from ._log import LEVELS
from ._records import field, record
from .policy import POLICY_FIELDS, Mode, parse_bool, parse_policy_fields
from .profiles import get_profile

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .rules import Rule  # loaded where rules are given: ~1.9M instructions at start

__all__ = [
    "ADAPTER_FIELDS",
    "GLOBAL_SETTINGS",
    "Layer",
    "Setting",
    "parse_setting",
    "suggest",
]


@record
class Setting:
    value: Any
    source: str
    """e.g. ``argument``, ``env KAPATCH_IDLE``, ``file /etc/kapatch.toml [redis] idle``."""


@record(frozen=False)
class Layer:
    """Everything one source says. Later-built layers do not change earlier ones."""

    name: str
    settings: dict[str, Setting] = field(default_factory=dict)
    adapters: dict[str, dict[str, Setting]] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)

    def set(self, key: str, value: Any, source: str) -> None:
        self.settings[key] = Setting(value, source)

    def set_adapter(self, adapter: str, key: str, value: Any, source: str) -> None:
        self.adapters.setdefault(adapter, {})[key] = Setting(value, source)


def _mode(value: object, setting: str) -> Mode:
    try:
        return Mode(str(value).strip().lower()) if isinstance(value, (str, Mode)) else Mode(value)
    except ValueError:
        raise ConfigError(setting, value, "respect or override") from None


def _profile(value: object, setting: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(setting, value, "a profile name")
    return get_profile(value, setting).name


def _on_error(value: object, setting: str) -> str:
    if isinstance(value, str) and value.strip().lower() in ("warn", "raise"):
        return value.strip().lower()
    raise ConfigError(setting, value, "warn (log and carry on) or raise (fail fast)")


def _log_level(value: object, setting: str) -> int:
    if isinstance(value, str) and value.strip().lower() in LEVELS:
        return LEVELS[value.strip().lower()]
    raise ConfigError(setting, value, f"one of {', '.join(LEVELS)}")


def _names(value: object, setting: str) -> tuple[str, ...]:
    """A comma list (env) or a list of strings (TOML, arguments)."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError(setting, value, "a comma-separated list (env) or a list of strings")
    if any(not item for item in items) and len(items) > 1:
        raise ConfigError(setting, value, "an empty entry in the list; remove the stray comma")
    return tuple(item.lower() for item in items if item)


def _exclude(value: object, setting: str) -> tuple[Rule, ...]:
    patterns = value.split(",") if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)):
        raise ConfigError(setting, value, "a comma-separated list (env) or a list of patterns")
    from .rules import Rule, parse_matcher

    rules = []
    for pattern in patterns:
        if isinstance(pattern, str) and not pattern.strip() and isinstance(value, str):
            continue
        rules.append(Rule(matcher=parse_matcher(pattern, setting), action="skip", source=setting))
    return tuple(rules)


def _path(value: object, setting: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(setting, value, "a path to a TOML file")
    return value.strip()


def _policy_field(name: str) -> Callable[[object, str], object]:
    def parse(value: object, setting: str) -> object:
        return parse_policy_fields({name: value}, setting_name=lambda _: setting)[name]

    return parse


POLICY_SETTINGS: dict[str, Callable[[object, str], object]] = {
    name: _policy_field(name) for name in POLICY_FIELDS
}

ADAPTER_FIELDS: dict[str, Callable[[object, str], object]] = {
    **POLICY_SETTINGS,
    "profile": _profile,
    "mode": _mode,
}
"""What a per-adapter override may set."""

GLOBAL_SETTINGS: dict[str, Callable[[object, str], object]] = {
    **ADAPTER_FIELDS,
    "enabled": parse_bool,
    "inbound": parse_bool,
    "adapters": _names,
    "disabled_adapters": _names,
    "exclude": _exclude,
    "config": _path,
    "on_error": _on_error,
    "log_level": _log_level,
}
"""Every top-level setting, by its canonical (TOML/argument) name."""


def parse_setting(table: dict[str, Callable[[object, str], object]], key: str, value: object,
                  setting: str) -> object:  # fmt: skip
    return table[key](value, setting)


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean X?"`` when *word* looks like a typo of one of *choices*."""
    import difflib  # only on an error: not worth its import at every start

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""
