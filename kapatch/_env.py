"""Read ``KAPATCH_*`` environment variables into a settings layer."""

from __future__ import annotations

from ._errors import ConfigError
from ._settings import ADAPTER_FIELDS, GLOBAL_SETTINGS, Layer, suggest

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["ENV_PREFIX", "INTERNAL_PREFIX", "env_name", "read_env"]

ENV_PREFIX = "KAPATCH_"
INTERNAL_PREFIX = "KAPATCH__"
"""Variables kapatch sets for itself (e.g. across ``kapatch run``); never user settings."""


def env_name(key: str, adapter: str | None = None) -> str:
    """``idle`` -> ``KAPATCH_IDLE``; ``("idle", "redis")`` -> ``KAPATCH_REDIS_IDLE``."""
    parts = [adapter, key] if adapter else [key]
    return ENV_PREFIX + "_".join(p.upper().replace("-", "_") for p in parts)


def _sort_key(variable: object) -> tuple[bool, str]:
    return (not isinstance(variable, str), variable if isinstance(variable, str) else "")


def read_env(environ: Mapping[str, str], adapter_names: Iterable[str]) -> Layer:
    """Parse every ``KAPATCH_*`` variable; an unknown one is an error, not silence.

    An empty value counts as unset, as orchestrators often template empty strings.
    """
    layer = Layer("environment")
    given: object = environ  # typed as a Mapping; checked, as callers may pass anything
    if not (hasattr(given, "keys") and hasattr(given, "__getitem__")) or isinstance(given, str):
        raise ConfigError("environ", environ, "a mapping of variable names to strings, like os.environ")
    known: dict[str, tuple[str | None, str]] = {env_name(key): (None, key) for key in GLOBAL_SETTINGS}
    with_adapters = False  # per-adapter names (~160) are made only when a variable is not global
    for variable in sorted(environ, key=_sort_key):
        if not isinstance(variable, str):  # os.environ has only str; a test mapping may not
            raise ConfigError("environ", variable, "variable names are strings, like os.environ's")
        if not variable.startswith(ENV_PREFIX) or variable.startswith(INTERNAL_PREFIX):
            continue
        raw = environ[variable]
        if not isinstance(raw, str):
            raise ConfigError(variable, raw, "a string, as os.environ holds")
        if raw.strip() == "":
            continue
        if variable not in known and not with_adapters:
            with_adapters = True
            for adapter in adapter_names:
                for key in ADAPTER_FIELDS:
                    known[env_name(key, adapter)] = (adapter, key)
        if variable not in known:
            raise ConfigError(
                variable,
                raw,
                "not a kapatch setting"
                + suggest(variable, known)
                + "; see `kapatch doctor` or the README for the list",
            )
        owner, key = known[variable]
        source = f"env {variable}"
        if owner is None:
            layer.set(key, GLOBAL_SETTINGS[key](raw, variable), source)
        else:
            layer.set_adapter(owner, key, ADAPTER_FIELDS[key](raw, variable), source)
    return layer
