"""Per-destination rules: match a connection's peer (CIDR, host glob, port) -> change or skip."""

from __future__ import annotations

from ._errors import ConfigError
from ._memo import remember
from ._records import record, replace
from .policy import Policy, parse_policy_fields, validate_field
from .profiles import get_profile

__all__ = ["Destination", "Matcher", "Rule", "first_match", "parse_matcher"]

TYPE_CHECKING = False  # typing costs ~7 ms at interpreter start; type checkers treat this as True
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Iterable
    from typing import Literal, TypeAlias

Network: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"

PATTERN_HELP = (
    "a CIDR (10.0.0.0/8, [fd00::/8]), an IP, a host glob (*.internal), or '*', "
    "each with an optional :port (db.internal:5432, [::1]:6379, *:5432)"
)
# Checked as character sets, not with re: rules are parsed at interpreter start.
_HOST_GLOB_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.*?-[]!")
_NUMERIC_CHARS = frozenset("0123456789./")


@record
class Destination:
    """Where a connection goes, as far as the adapter knows it."""

    host: str | None = None
    """The name the application asked for (may itself be an IP literal)."""
    address: str | None = None
    """The IP the socket connects to, when known."""
    port: int | None = None

    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        import ipaddress  # imported when rules are used, not at every start

        for candidate in (self.address, self.host):
            if candidate:
                try:
                    return ipaddress.ip_address(candidate.split("%", 1)[0])
                except ValueError:
                    continue
        return None


@record
class Matcher:
    """One destination pattern. A field left ``None`` matches anything."""

    network: Network | None = None
    host_glob: str | None = None
    port: int | None = None
    text: str = "*"

    def matches(self, destination: Destination) -> bool:
        if self.port is not None and destination.port != self.port:
            return False
        if self.network is not None:
            ip = destination.ip()
            mapped = getattr(ip, "ipv4_mapped", None)  # only IPv6 addresses have it
            if mapped is not None and self.network.version == 4:
                ip = mapped  # a dual-stack socket's ::ffff:a.b.c.d is the IPv4 peer a.b.c.d
            if ip is None or ip.version != self.network.version or ip not in self.network:
                return False
        if self.host_glob is not None:
            host = destination.host
            from fnmatch import fnmatchcase  # only where host-glob rules exist: it imports re

            if host is None or not fnmatchcase(host.lower(), self.host_glob):
                return False
        return True


_MAX_PATTERN = 300  # a host name is at most 253 characters; with a port and brackets, still under this
_MAX_PORT_DIGITS = 10  # checked before int(), which refuses more than 4,300 digits with a ValueError


def _port(text: str, setting: str, pattern: str) -> int:
    if (
        not (text.isascii() and text.isdecimal())
        or len(text) > _MAX_PORT_DIGITS
        or not 1 <= int(text) <= 65535
    ):
        raise ConfigError(setting, pattern, f"port {text!r} is not 1-65535; " + PATTERN_HELP)
    return int(text)


def _network(text: str, setting: str, pattern: str) -> Network:
    import ipaddress

    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as error:
        raise ConfigError(setting, pattern, f"malformed CIDR ({error}); " + PATTERN_HELP) from None


def parse_matcher(pattern: str, setting: str = "match") -> Matcher:
    """Parse one destination pattern; see :data:`PATTERN_HELP` for the forms."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(setting, pattern, PATTERN_HELP)
    text = pattern.strip()
    if len(text) > _MAX_PATTERN:
        raise ConfigError(setting, pattern, f"longer than {_MAX_PATTERN} characters; " + PATTERN_HELP)
    host_part, port = text, None
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(setting, pattern, PATTERN_HELP)
        return Matcher(
            network=_network(inside, setting, pattern),
            port=_port(rest[1:], setting, pattern) if rest else None,
            text=text,
        )
    if text.count(":") == 1:
        host_part, port_text = text.split(":")
        port = _port(port_text, setting, pattern)
    elif text.count(":") > 1:  # a bare IPv6 address or network, no port
        return Matcher(network=_network(text, setting, pattern), text=text)
    if host_part in ("", "*"):
        return Matcher(port=port, text=text)
    if _NUMERIC_CHARS.issuperset(host_part):  # no colon is left here: IPv6 returned above
        return Matcher(network=_network(host_part, setting, pattern), port=port, text=text)
    if not _HOST_GLOB_CHARS.issuperset(host_part):
        raise ConfigError(setting, pattern, PATTERN_HELP)
    return Matcher(host_glob=host_part.lower(), port=port, text=text)


@record
class Rule:
    """For destinations that match: skip them, or change the policy."""

    matcher: Matcher
    action: Literal["skip", "apply"] = "apply"
    profile: str | None = None
    """Start from this profile instead of the adapter's policy."""
    changes: tuple[tuple[str, object], ...] = ()
    """Policy fields to change, canonical values."""
    adapters: frozenset[str] | None = None
    """Only for these adapters; ``None``: all."""
    source: str = "argument"

    @classmethod
    def build(
        cls,
        match: str,
        *,
        skip: bool = False,
        profile: str | None = None,
        adapters: Iterable[str] | None = None,
        source: str = "argument",
        setting: str = "rule",
        **changes: object,
    ) -> Rule:
        """A validated rule.

        ``Rule.build("10.0.0.0/8", skip=True)``, ``Rule.build("*:6379", idle="10s")``.
        """
        matcher = parse_matcher(match, f"{setting}.match")
        if not isinstance(skip, bool):
            raise ConfigError(f"{setting}.skip", skip, "True or False")
        if profile is not None and not isinstance(profile, str):
            raise ConfigError(f"{setting}.profile", profile, "a profile name")
        only = None if adapters is None else _adapter_names(adapters, f"{setting}.adapters")
        if not isinstance(source, str):
            raise ConfigError(f"{setting}.source", source, "a string saying where the rule came from")
        if skip and (profile or changes):
            raise ConfigError(setting, match, "a rule either skips or changes the policy, not both")
        if not skip and not profile and not changes:
            raise ConfigError(setting, match, "a rule needs skip = true, a profile, or policy fields")
        if profile is not None:
            get_profile(profile, f"{setting}.profile")
        parsed = parse_policy_fields(changes, setting_name=lambda name: f"{setting}.{name}")
        return cls(
            matcher=matcher,
            action="skip" if skip else "apply",
            profile=profile,
            changes=tuple(parsed.items()),
            adapters=only,
            source=source,
        )

    def __post_init__(self) -> None:
        # Rule(...) is public too: check what Rule.build() would have, so a rule made by
        # hand fails here with a ConfigError, not later in an adapter.
        if not isinstance(self.matcher, Matcher):
            raise ConfigError("rule.matcher", self.matcher, "a Matcher; build rules with Rule.build()")
        if self.action not in ("skip", "apply"):
            raise ConfigError("rule.action", self.action, "skip or apply")
        if self.profile is not None:
            get_profile(self.profile, "rule.profile")
        if not isinstance(self.changes, tuple) or not all(
            isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str) for c in self.changes
        ):
            raise ConfigError("rule.changes", self.changes, "a tuple of (policy field, value) pairs")
        for name, value in self.changes:
            validate_field(name, value, f"rule.{name}")
        if self.adapters is not None and not (
            isinstance(self.adapters, frozenset) and all(isinstance(a, str) for a in self.adapters)
        ):
            raise ConfigError("rule.adapters", self.adapters, "None or a frozenset of adapter names")
        if not isinstance(self.source, str):
            raise ConfigError("rule.source", self.source, "a string")

    def policy_for(self, base: Policy) -> Policy:
        """The policy this rule gives a connection whose adapter policy is *base*."""
        return _rule_policy(self, base)

    def describe(self) -> str:
        what = (
            "skip"
            if self.action == "skip"
            else ", ".join(
                ([f"profile {self.profile}"] if self.profile else [])
                + [f"{name}={value}" for name, value in self.changes]
            )
        )
        only = f" (adapters: {', '.join(sorted(self.adapters))})" if self.adapters else ""
        return f"{self.matcher.text} -> {what}{only}"


def _adapter_names(value: object, setting: str) -> frozenset[str]:
    allowed = "a list of adapter names, e.g. ['redis']"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(setting, value, allowed)
    names = list(value)
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(setting, value, allowed)
    return frozenset(names)


_RULE_POLICIES: dict[tuple[Rule, Policy], Policy] = {}


def _rule_policy(rule: Rule, base: Policy) -> Policy:
    # Computed once per (rule, adapter policy): connections only look it up.
    found = _RULE_POLICIES.get((rule, base))
    if found is None:
        start = get_profile(rule.profile).policy if rule.profile else base
        found = remember(_RULE_POLICIES, (rule, base), replace(start, **dict(rule.changes)), 256)
    return found


def first_match(rules: Iterable[Rule], adapter: str, destination: Destination) -> Rule | None:
    """The first rule for *adapter* whose pattern matches *destination*."""
    for rule in rules:
        if (rule.adapters is None or adapter in rule.adapters) and rule.matcher.matches(destination):
            return rule
    return None
