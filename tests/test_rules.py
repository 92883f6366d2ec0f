"""Per-destination rules: patterns (CIDR, IP, host glob, port), matching, policies, first match."""

from __future__ import annotations

import ipaddress

import pytest
from checks import assert_one_clear_message
from hypothesis import given
from hypothesis import strategies as st

from kapatch import PROFILES, ConfigError, Destination, Policy, Rule
from kapatch.rules import first_match, parse_matcher


@pytest.mark.parametrize(
    ("pattern", "network", "glob", "port"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None, None),
        ("10.1.2.3/8", "10.0.0.0/8", None, None),  # host bits are forgiven
        ("10.0.0.7", "10.0.0.7/32", None, None),
        ("10.0.0.0/8:5432", "10.0.0.0/8", None, 5432),
        ("[fd00::/8]", "fd00::/8", None, None),
        ("fd00::/8", "fd00::/8", None, None),
        ("::1", "::1/128", None, None),
        ("[::1]:6379", "::1/128", None, 6379),
        ("*.internal", None, "*.internal", None),
        ("*.Internal", None, "*.internal", None),
        ("db.internal:5432", None, "db.internal", 5432),
        ("redis-?.cache", None, "redis-?.cache", None),
        ("*", None, None, None),
        ("*:5432", None, None, 5432),
        (":5432", None, None, 5432),
        ("  *.svc  ", None, "*.svc", None),
    ],
)
def test_patterns(pattern: str, network: str | None, glob: str | None, port: int | None) -> None:
    matcher = parse_matcher(pattern)
    assert matcher.network == (ipaddress.ip_network(network) if network else None)
    assert (matcher.host_glob, matcher.port) == (glob, port)


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("10.0.0.0/33", "malformed CIDR"),
        ("10.0.0.300/8", "malformed CIDR"),
        ("300.1.1.1", "malformed CIDR"),
        ("10.0.0.", "malformed CIDR"),
        ("[fd00::/200]", "malformed CIDR"),
        ("fd00::/200", "malformed CIDR"),
        ("[nothost]", "malformed CIDR"),
        ("*:0", "port '0' is not 1-65535"),
        ("*:65536", "port '65536' is not 1-65535"),
        ("db:http", "port 'http' is not 1-65535"),
        ("*:", "port '' is not 1-65535"),
        ("*:٣", "port '٣' is not 1-65535"),
        ("[::1", "a CIDR"),
        ("[::1]6379", "a CIDR"),
        ("a b", "a CIDR"),
        ("db/x", "a CIDR"),
        ("", "a CIDR"),
        ("   ", "a CIDR"),
    ],
)
def test_bad_patterns(pattern: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_matcher(pattern, "KAPATCH_EXCLUDE")
    assert_one_clear_message(raised.value, "KAPATCH_EXCLUDE", pattern, allowed)
    assert "optional :port" in str(raised.value)  # every message shows the forms there are


@pytest.mark.parametrize("value", [None, 5, b"10.0.0.0/8", ["10.0.0.0/8"]])
def test_a_pattern_must_be_text(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_matcher(value)  # type: ignore[arg-type]


@given(st.text(max_size=40))
def test_junk_patterns_are_config_errors_or_matchers(text: str) -> None:
    error: ConfigError | None = None
    try:
        matcher = parse_matcher(text)
    except ConfigError as raised:
        error = raised
    if error is None:
        # whatever parsed must be usable against any destination without raising
        matcher.matches(Destination("db.internal", "10.0.0.1", 5432))
        matcher.matches(Destination(None, None, None))
    else:
        assert error.setting == "match"


# ---------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("pattern", "destination", "matches"),
    [
        ("10.0.0.0/8", Destination("db.internal", "10.1.2.3", 5432), True),
        ("10.0.0.0/8", Destination("db.internal", "192.168.1.1", 5432), False),
        ("10.0.0.0/8", Destination("10.9.9.9", None, 80), True),  # the host is an IP literal
        ("10.0.0.0/8", Destination("db.internal", None, 5432), False),  # no IP known
        ("10.0.0.0/8", Destination(None, "::ffff:10.0.0.1", 5432), True),  # v4-mapped (dual stack)
        ("10.0.0.0/8", Destination(None, "::ffff:192.168.0.1", 5432), False),
        ("::ffff:0:0/96", Destination(None, "::ffff:10.0.0.1", 5432), True),
        ("fd00::/8", Destination(None, "fd12::1", 6379), True),
        ("fe80::/10", Destination(None, "fe80::1%eth0", 6379), True),  # zone id ignored
        ("*.internal", Destination("DB.Internal", "10.0.0.1", 5432), True),  # names ignore case
        ("*.internal", Destination("internal", "10.0.0.1", 5432), False),
        ("*.internal", Destination(None, "10.0.0.1", 5432), False),
        ("db.internal:5432", Destination("db.internal", None, 5432), True),
        ("db.internal:5432", Destination("db.internal", None, 5433), False),
        ("*:6379", Destination("cache", "10.0.0.1", 6379), True),
        ("*:6379", Destination("cache", "10.0.0.1", None), False),
        ("*", Destination(None, None, None), True),
        ("[::1]:6379", Destination("localhost", "::1", 6379), True),
        ("[::1]:6379", Destination("localhost", "127.0.0.1", 6379), False),
    ],
)
def test_matching(pattern: str, destination: Destination, matches: bool) -> None:
    assert parse_matcher(pattern).matches(destination) is matches


@given(
    network=st.ip_addresses(v=4).flatmap(
        lambda address: st.integers(0, 32).map(
            lambda bits: ipaddress.ip_network(f"{address}/{bits}", strict=False)
        )
    ),
    address=st.ip_addresses(v=4),
    port=st.integers(1, 65535),
    rule_port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_cidr_matching_is_set_membership(
    network: ipaddress.IPv4Network, address: ipaddress.IPv4Address, port: int, rule_port: int | None
) -> None:
    pattern = str(network) + (f":{rule_port}" if rule_port else "")
    wanted = address in network and rule_port in (None, port)
    assert parse_matcher(pattern).matches(Destination("name", str(address), port)) is wanted


@given(
    network=st.ip_addresses(v=6).flatmap(
        lambda address: st.integers(0, 128).map(
            lambda bits: ipaddress.ip_network(f"{address}/{bits}", strict=False)
        )
    ),
    address=st.ip_addresses(v=6),
)
def test_ipv6_cidr_matching_is_set_membership(
    network: ipaddress.IPv6Network, address: ipaddress.IPv6Address
) -> None:
    for pattern in (str(network), f"[{network}]"):
        assert parse_matcher(pattern).matches(Destination(None, str(address), 443)) is (address in network)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@given(prefix=st.lists(labels, min_size=1, max_size=3), suffix=st.lists(labels, min_size=1, max_size=2))
def test_host_globs_match_suffixes(prefix: list[str], suffix: list[str]) -> None:
    host = ".".join(prefix + suffix)
    assert parse_matcher("*." + ".".join(suffix)).matches(Destination(host.upper(), None, 80))
    # labels never contain "_", so this suffix cannot match
    assert not parse_matcher("*." + ".".join(suffix) + "._no").matches(Destination(host, None, 80))


# ---------------------------------------------------------------- rules


def test_rule_policies() -> None:
    base = PROFILES["balanced"].policy
    assert Rule.build("*:6379", idle="10s").policy_for(base) == Policy(idle=10, interval=10, count=5)
    assert Rule.build("*:6379", profile="fast-failover").policy_for(base) == PROFILES["fast-failover"].policy
    both = Rule.build("*:6379", profile="fast-failover", user_timeout="off")
    assert both.policy_for(base) == Policy(idle=10, interval=5, count=3, user_timeout="off", heartbeat=10_000)
    assert Rule.build("*", enabled="false").policy_for(base).enabled is False
    assert Rule.build("10.0.0.0/8", skip=True).action == "skip"


@pytest.mark.parametrize(
    ("kwargs", "setting", "allowed"),
    [
        ({"skip": True, "idle": "5s"}, "rule", "either skips or changes the policy, not both"),
        ({"skip": True, "profile": "aws"}, "rule", "either skips or changes the policy, not both"),
        ({}, "rule", "a rule needs skip = true, a profile, or policy fields"),
        ({"profile": "awz"}, "rule.profile", "one of balanced"),
        ({"idle": "0"}, "rule.idle", "1s to 32767s"),
        ({"count": "lots"}, "rule.count", "from 1 to 127"),
        ({"idel": "5"}, "rule.idel", "not a policy field"),
    ],
)
def test_bad_rules(kwargs: dict[str, object], setting: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Rule.build("*:6379", **kwargs)  # type: ignore[arg-type]
    assert raised.value.setting == setting
    assert allowed in str(raised.value)


def test_first_match_wins_and_adapters_filter() -> None:
    skip_internal = Rule.build("*.internal", skip=True)
    redis_only = Rule.build("*:6379", idle="10s", adapters=["redis"])
    everything = Rule.build("*", profile="aws")
    rules = [skip_internal, redis_only, everything]
    assert first_match(rules, "redis", Destination("db.internal", None, 6379)) is skip_internal
    assert first_match(rules, "redis", Destination("cache", None, 6379)) is redis_only
    assert first_match(rules, "socket", Destination("cache", None, 6379)) is everything
    assert first_match([redis_only], "socket", Destination("cache", None, 6379)) is None
    assert first_match([], "redis", Destination("cache", None, 6379)) is None


def test_describe() -> None:
    assert Rule.build("10.0.0.0/8", skip=True).describe() == "10.0.0.0/8 -> skip"
    assert (
        Rule.build("*:6379", profile="aws", idle="10s", adapters=["redis"]).describe()
        == "*:6379 -> profile aws, idle=10 (adapters: redis)"
    )
