"""Sources -> one :class:`Config`, merged once at install.

Precedence, highest first: explicit arguments > environment > TOML file > profile >
built-in default. Each setting is taken from the highest source that sets it;
the profile (chosen by the highest source that names one) fills the policy fields
no source sets. Per-adapter settings work the same way on top of the global policy.
"""

from __future__ import annotations

import os

from ._env import read_env
from ._errors import ConfigError
from ._log import WARNING
from ._records import field, record, replace
from ._registry import adapter_names
from ._settings import ADAPTER_FIELDS, GLOBAL_SETTINGS, Layer, Setting
from .policy import POLICY_FIELDS, Mode, Policy
from .profiles import DEFAULT_PROFILE, get_profile

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, Literal

    from .rules import Rule  # loaded where rules are given: ~1.9M instructions at start

_MappingProxyType = type(type.__dict__)
"""``types.MappingProxyType``, without importing ``types`` (~1M instructions at start)."""

__all__ = ["AdapterConfig", "Config", "load_config"]


@record
class AdapterConfig:
    """The settings one adapter runs with."""

    name: str
    policy: Policy
    mode: Mode
    sources: Mapping[str, str]
    """Where each policy field and the mode came from."""


@record
class Config:
    """The merged, validated configuration. Build it with :func:`load_config`."""

    enabled: bool = True
    profile: str = DEFAULT_PROFILE
    policy: Policy = field(default_factory=lambda: get_profile(DEFAULT_PROFILE).policy)
    mode: Mode = Mode.RESPECT
    adapters: frozenset[str] | None = None
    """Adapters to enable; ``None``: every one that is available."""
    disabled_adapters: frozenset[str] = frozenset()
    """Adapters never to enable; ``"*"`` disables all."""
    opted_in: frozenset[str] = frozenset()
    """Opt-in adapters turned on (``inbound = true``, or named in ``adapters``)."""
    adapter_configs: Mapping[str, AdapterConfig] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    on_error: Literal["warn", "raise"] = "warn"
    log_level: int = WARNING
    config_file: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def wants_adapter(self, name: str) -> bool:
        """Whether the configuration selects adapter *name* (availability aside)."""
        if "*" in self.disabled_adapters or name in self.disabled_adapters:
            return False
        return self.adapters is None or name in self.adapters

    def for_adapter(self, name: str) -> AdapterConfig:
        """The policy and mode adapter *name* runs with."""
        found = self.adapter_configs.get(name)
        if found is not None:
            return found
        inherited = {key: self.sources.get(key, "default") for key in (*POLICY_FIELDS, "mode")}
        return AdapterConfig(name, self.policy, self.mode, _MappingProxyType(inherited))


def load_config(
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    rules: Iterable[Rule] = (),
    **arguments: object,
) -> Config:
    """Merge arguments, environment (default ``os.environ``), TOML file and profile.

    *arguments* take the names of the TOML keys (``profile``, ``idle``, ``mode``,
    ``adapters``, ``exclude``, ``config``, ...); *overrides* maps an adapter name to
    its own settings (``{"redis": {"idle": "10s"}}``). Raises :class:`ConfigError`.
    """
    return merge_sources(
        arguments,
        environ,
        {} if overrides is None else overrides,
        () if rules is None else rules,
        adapter_names(),
    )


def merge_sources(
    arguments: Mapping[str, object],
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Mapping[str, object]],
    rules: Iterable[Rule],
    names: tuple[str, ...],
) -> Config:
    """:func:`load_config` with the adapter names given (tests, third-party adapters)."""
    args = _argument_layer(arguments, overrides, rules, names)
    env = read_env(os.environ if environ is None else environ, names)
    layers = [args, env]
    config_path = _highest(layers, "config")
    if config_path is not None:
        from ._toml import read_toml  # tomllib only for processes that have a file

        layers.append(read_toml(config_path.value, names, setting=_setting_name(config_path)))
    return _merge(layers, names, config_path.value if config_path else None)


def _setting_name(setting: Setting) -> str:
    return setting.source.removeprefix("env ") if setting.source.startswith("env ") else "config"


def _argument_layer(
    arguments: Mapping[str, object],
    overrides: Mapping[str, Mapping[str, object]],
    rules: Iterable[Rule],
    names: tuple[str, ...],
) -> Layer:
    layer = Layer("arguments")
    _require_mapping(
        "overrides", overrides, 'a mapping of adapter name to settings: {"redis": {"idle": "10s"}}'
    )
    given: object = rules  # typed as an Iterable; checked, as callers may pass anything
    if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__"):
        raise ConfigError(
            "rules", rules, "a list of kapatch.Rule objects, e.g. [Rule.build('10.0.0.0/8', skip=True)]"
        )
    for key, value in arguments.items():
        if key not in GLOBAL_SETTINGS:
            raise ConfigError(key, value, f"not a kapatch setting; settings are {', '.join(GLOBAL_SETTINGS)}")
        if value is not None:
            layer.set(key, GLOBAL_SETTINGS[key](value, key), "argument")
    for adapter, settings in overrides.items():
        if adapter not in names:
            raise ConfigError("overrides", adapter, f"an adapter: {', '.join(names)}")
        _require_mapping(
            f"overrides[{adapter!r}]", settings, f'a mapping of {adapter}\'s settings: {{"idle": "10s"}}'
        )
        for key, value in settings.items():
            setting = f"overrides[{adapter!r}][{key!r}]"
            if key not in ADAPTER_FIELDS:
                raise ConfigError(setting, value, f"one of {', '.join(ADAPTER_FIELDS)}")
            layer.set_adapter(adapter, key, ADAPTER_FIELDS[key](value, setting), "argument")
    for rule in rules:
        from .rules import Rule

        if not isinstance(rule, Rule):
            raise ConfigError("rules", rule, "kapatch.Rule objects, e.g. Rule.build('10.0.0.0/8', skip=True)")
        unknown = sorted((rule.adapters or frozenset()) - set(names))
        if unknown:  # a typo would make the rule silently match nothing
            raise ConfigError(
                f"rule {rule.matcher.text} adapters", ",".join(unknown), f"adapters are {', '.join(names)}"
            )
        layer.rules.append(rule)
    return layer


def _require_mapping(setting: str, value: object, allowed: str) -> None:
    # Duck-typed: collections.abc is not worth its import at interpreter start.
    if not (hasattr(value, "items") and hasattr(value, "__getitem__")) or isinstance(value, (str, bytes)):
        raise ConfigError(setting, value, allowed)


def _highest(layers: list[Layer], key: str) -> Setting | None:
    for layer in layers:
        if key in layer.settings:
            return layer.settings[key]
    return None


def _highest_adapter(layers: list[Layer], adapter: str, key: str) -> Setting | None:
    for layer in layers:
        found = layer.adapters.get(adapter, {}).get(key)
        if found is not None:
            return found
    return None


def _policy(
    base: Policy, base_sources: Mapping[str, str], pick: Any, label: str
) -> tuple[Policy, dict[str, str]]:
    values: dict[str, object] = {}
    sources = dict(base_sources)
    for name in POLICY_FIELDS:
        found = pick(name)
        if found is not None:
            values[name] = found.value
            sources[name] = found.source
    try:
        return replace(base, **values), sources
    except ConfigError as error:  # a combination, e.g. idle set but the profile keeps OS timings
        where = ", ".join(sorted({sources[n] for n in values})) or label
        raise ConfigError(f"{error.setting} ({where})", error.value, error.allowed) from None


def _merge(layers: list[Layer], names: tuple[str, ...], config_file: str | None) -> Config:
    def pick(key: str) -> Setting | None:
        return _highest(layers, key)

    profile_setting = pick("profile")
    profile = get_profile(profile_setting.value if profile_setting else DEFAULT_PROFILE)
    profile_source = f"profile {profile.name}" + (f" ({profile_setting.source})" if profile_setting else "")
    policy, sources = _policy(profile.policy, dict.fromkeys(POLICY_FIELDS, profile_source), pick, "policy")
    mode_setting = pick("mode")
    mode = mode_setting.value if mode_setting else Mode.RESPECT
    sources["mode"] = mode_setting.source if mode_setting else "default"

    adapter_configs: dict[str, AdapterConfig] = {}
    for adapter in names:
        if not any(adapter in layer.adapters for layer in layers):
            continue
        own = _highest_adapter(layers, adapter, "profile")
        if own is not None:
            base = get_profile(own.value).policy
            base_sources = dict.fromkeys(POLICY_FIELDS, f"profile {own.value} ({own.source})")
        else:
            base, base_sources = policy, {k: sources[k] for k in POLICY_FIELDS}
        adapter_policy, adapter_sources = _policy(
            base, base_sources, lambda key, a=adapter: _highest_adapter(layers, a, key), adapter
        )
        own_mode = _highest_adapter(layers, adapter, "mode")
        adapter_sources["mode"] = own_mode.source if own_mode else sources["mode"]
        adapter_configs[adapter] = AdapterConfig(
            adapter, adapter_policy, own_mode.value if own_mode else mode, _MappingProxyType(adapter_sources)
        )

    for key in ("adapters", "disabled_adapters"):
        chosen = pick(key)
        unknown = [n for n in (chosen.value if chosen else ()) if n not in names and n != "*"]
        if chosen is not None and unknown:
            raise ConfigError(
                _source_setting(chosen, key),
                ",".join(chosen.value),
                f"adapters are {', '.join(names)} (or *)",
            )
    selected = pick("adapters")
    disabled = pick("disabled_adapters")
    exclude = pick("exclude")
    rules = [*(exclude.value if exclude else ()), *(r for layer in layers for r in layer.rules)]
    _check_rules(rules, policy, adapter_configs, names)
    enabled = pick("enabled")
    inbound = pick("inbound")
    opted_in = frozenset(selected.value if selected else ())
    own_inbound = _highest_adapter(layers, "inbound", "enabled")
    # On by `inbound = true` (KAPATCH_INBOUND=1), or by its own `enabled` (KAPATCH_INBOUND_ENABLED=1).
    if (inbound is not None and inbound.value) or (own_inbound is not None and own_inbound.value):
        opted_in |= {"inbound"}
    on_error = pick("on_error")
    log_level = pick("log_level")
    for key in (
        "enabled", "inbound", "adapters", "disabled_adapters", "exclude", "on_error", "log_level", "config"
    ):  # fmt: skip
        found = pick(key)
        sources[key] = found.source if found else "default"
    sources["profile"] = profile_setting.source if profile_setting else "default"
    return Config(
        enabled=enabled.value if enabled else True,
        profile=profile.name,
        policy=policy,
        mode=mode,
        adapters=frozenset(selected.value) - {"*"} if selected and "*" not in selected.value else None,
        disabled_adapters=frozenset(disabled.value) if disabled else frozenset(),
        opted_in=opted_in,
        adapter_configs=_MappingProxyType(adapter_configs),
        rules=tuple(rules),
        on_error=on_error.value if on_error else "warn",
        log_level=log_level.value if log_level else WARNING,
        config_file=config_file,
        sources=_MappingProxyType(sources),
    )


def _check_rules(
    rules: list[Rule], policy: Policy, adapter_configs: Mapping[str, AdapterConfig], names: tuple[str, ...]
) -> None:
    """Build each rule's policy for every adapter now, so a bad combination fails at install.

    A rule that changes only ``idle`` on top of a policy that keeps the OS timings (or an
    ``auto`` user timeout that grows past the limit) is invalid; found at connect time it
    could only be logged, and an adapter calling ``decide()`` would raise into the application.
    """
    for rule in rules:
        if rule.action != "apply":
            continue
        for adapter in names:
            if rule.adapters is not None and adapter not in rule.adapters:
                continue
            found = adapter_configs.get(adapter)
            try:
                rule.policy_for(found.policy if found else policy)
            except ConfigError as error:
                raise ConfigError(
                    f"rule {rule.matcher.text} ({rule.source}; {adapter} adapter)",
                    error.value,
                    f"{error.setting}: {error.allowed}",
                ) from None


def _source_setting(setting: Setting, key: str) -> str:
    """``env KAPATCH_ADAPTERS`` -> ``KAPATCH_ADAPTERS``; an argument is named by its keyword."""
    return setting.source.split(" ", 1)[1] if " " in setting.source else key
