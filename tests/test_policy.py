"""Policy, durations, limits and profiles: every value parses or fails with one clear message."""

from __future__ import annotations

from decimal import Decimal

import pytest
from checks import assert_one_clear_message
from hypothesis import given
from hypothesis import strategies as st

from kapatch import PROFILES, ConfigError, Mode, Policy
from kapatch._durations import parse_duration_ms
from kapatch.policy import MAX_COUNT, MAX_IDLE_S, MAX_INTERVAL_S, MAX_USER_TIMEOUT_MS
from kapatch.profiles import DEFAULT_PROFILE, get_profile
from kapatch.sockopts import compile_plan


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("45", 45_000),
        (45, 45_000),
        ("45s", 45_000),
        ("45S", 45_000),
        (" 45 s ", 45_000),
        ("1500ms", 1_500),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1.5m", 90_000),
        ("1.001s", 1_001),  # exact: a float would make this 1000.9999...
        ("1.1h", 3_960_000),
        (2.5, 2_500),
        (4.1, 4_100),
        ("0", 0),
        ("+5", 5_000),
    ],
)
def test_durations(text: object, millis: int) -> None:
    assert parse_duration_ms(text, "d") == millis


@given(st.integers(0, 10**15))
def test_milliseconds_round_trip(millis: int) -> None:
    assert parse_duration_ms(f"{millis}ms", "d") == millis
    # the same value written as decimal seconds
    assert parse_duration_ms(f"{Decimal(millis) / 1000}s", "d") == millis


@given(st.integers(0, 10**9), st.sampled_from([("s", 1000), ("m", 60_000), ("h", 3_600_000), ("", 1000)]))
def test_whole_units_round_trip(number: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_duration_ms(f"{number}{suffix}", "d") == number * factor


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("abc", "a duration"),
        ("", "a duration"),
        ("5 sec", "a duration"),
        ("1e3", "a duration"),
        ("٣", "a duration"),  # a Unicode digit is not an ASCII one
        ("-5", "must not be negative"),
        (-5, "must not be negative"),
        ("0.5ms", "whole number of milliseconds"),
        (True, "a duration"),
        (None, "a duration"),
        (float("nan"), "a duration"),
        (float("inf"), "a duration"),
        ([5], "a duration"),
        ("1" * 40, "a duration"),
        ("0." + "1" * 40, "a duration"),
        ("5\u017f", "a duration"),  # LATIN SMALL LETTER LONG S: regex IGNORECASE took it for "s"
        ("5.", "a duration"),
        (".5", "a duration"),
    ],
)
def test_bad_durations(value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_duration_ms(value, "KAPATCH_IDLE")
    assert_one_clear_message(raised.value, "KAPATCH_IDLE", value, allowed)


def test_huge_numbers_are_out_of_range_not_a_crash() -> None:
    """A float would overflow to inf here (OverflowError); exact arithmetic just says out of range."""
    for value in (10**400, 1e308, "9" * 30):
        with pytest.raises(ConfigError):
            Policy.parse({"idle": value})
        with pytest.raises(ConfigError):
            Policy.parse({"user_timeout": value})


# ---------------------------------------------------------------- fields and limits


@pytest.mark.parametrize(
    ("field", "raw", "canonical"),
    [
        ("idle", "45", 45),
        ("idle", "5m", 300),
        ("idle", "1h", 3600),
        ("idle", "2000ms", 2),
        ("idle", 2.0, 2),
        ("interval", "15s", 15),
        ("count", "7", 7),
        ("count", 7, 7),
        ("count", " 9 ", 9),
        ("user_timeout", "1500ms", 1500),
        ("user_timeout", "30s", 30_000),
        ("user_timeout", 30, 30_000),
        ("user_timeout", "AUTO", "auto"),
        ("user_timeout", "off", "off"),
        ("enabled", "yes", True),
        ("enabled", "Off", False),
        ("enabled", "0", False),
        ("enabled", False, False),
    ],
)
def test_fields_parse(field: str, raw: object, canonical: object) -> None:
    assert getattr(Policy().evolve(**{field: raw}), field) == canonical


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("idle", "1", f"{MAX_IDLE_S}"),
        ("interval", "1s", f"{MAX_INTERVAL_S}s"),
        ("count", "1", f"{MAX_COUNT}"),
        ("user_timeout", "1ms", f"{MAX_USER_TIMEOUT_MS}ms"),
    ],
)
def test_limits_are_inclusive(field: str, low: str, high: str) -> None:
    base = Policy(user_timeout="off")
    assert base.evolve(**{field: low}) != base.evolve(**{field: high})
    assert (MAX_IDLE_S, MAX_INTERVAL_S, MAX_COUNT, MAX_USER_TIMEOUT_MS) == (32767, 32767, 127, 2**31 - 1)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("idle", "0", "1s to 32767s"),
        ("idle", "32768", "1s to 32767s"),
        ("idle", "10h", "1s to 32767s"),
        ("idle", "1500ms", "in whole seconds"),
        ("idle", "-1", "must not be negative"),
        ("idle", "ten", "a duration"),
        ("interval", "0s", "1s to 32767s"),
        ("interval", "32768s", "1s to 32767s"),
        ("count", "0", "from 1 to 127"),
        ("count", "128", "from 1 to 127"),
        ("count", "-1", "from 1 to 127"),
        ("count", "5s", "from 1 to 127"),
        ("count", "2.5", "from 1 to 127"),
        ("count", 2.0, "from 1 to 127"),
        ("count", True, "from 1 to 127"),
        ("count", "٣", "from 1 to 127"),
        ("user_timeout", "0", 'use "off"'),
        ("user_timeout", "2147483648ms", "2147483647ms"),
        ("user_timeout", "never", '"auto", "off"'),
        ("enabled", "maybe", "true/false"),
        ("enabled", 1, "true/false"),
    ],
)
def test_bad_field_values(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Policy.parse({field: value}, setting_name=lambda name: f"KAPATCH_{name.upper()}")
    assert_one_clear_message(raised.value, f"KAPATCH_{field.upper()}", value, allowed)


def test_an_unknown_field_lists_the_fields() -> None:
    with pytest.raises(ConfigError) as raised:
        Policy().evolve(idel="5")
    assert_one_clear_message(raised.value, "idel", "5", "enabled, idle, interval, count, user_timeout")


@pytest.mark.parametrize(
    ("kwargs", "setting", "allowed"),
    [
        ({"idle": "45s"}, "idle", "use Policy.parse()"),
        ({"idle": True}, "idle", "an int from 1 to 32767s"),
        ({"idle": 0}, "idle", "an int from 1 to 32767s"),
        ({"count": 128}, "count", "an int from 1 to 127 probes"),
        ({"user_timeout": 0}, "user_timeout", '"auto" or "off"'),
        ({"user_timeout": "45s"}, "user_timeout", "use Policy.parse()"),
        ({"enabled": "yes"}, "enabled", "a bool"),
    ],
)
def test_the_constructor_takes_canonical_values_only(
    kwargs: dict[str, object], setting: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Policy(**kwargs)  # type: ignore[arg-type]
    assert_one_clear_message(raised.value, setting, next(iter(kwargs.values())), allowed)


def test_timings_come_all_three_or_none() -> None:
    with pytest.raises(ConfigError, match="give all three, or none of them"):
        Policy(idle=5, interval=None, count=None)
    assert Policy(idle=None, interval=None, count=None).keeps_os_timings


def test_an_auto_user_timeout_must_fit() -> None:
    with pytest.raises(ConfigError, match="exceeds 2147483647 ms; set user_timeout explicitly"):
        Policy(idle=MAX_IDLE_S, interval=MAX_INTERVAL_S, count=MAX_COUNT)
    ok = Policy(idle=MAX_IDLE_S, interval=MAX_INTERVAL_S, count=MAX_COUNT, user_timeout="off")
    assert ok.user_timeout_ms is None


def test_derived_values() -> None:
    policy = Policy(idle=60, interval=10, count=5)
    assert (policy.detection_bound_s, policy.user_timeout_ms) == (110, 110_000)
    assert Policy(user_timeout=1500).user_timeout_ms == 1500
    assert Policy(idle=None, interval=None, count=None).detection_bound_s is None
    assert Policy(idle=None, interval=None, count=None).user_timeout_ms is None  # auto without timings


def test_describe() -> None:
    assert Policy().describe() == "idle 60s, interval 10s, count 5, user timeout 110000ms (auto)"
    assert Policy(user_timeout="off").describe() == "idle 60s, interval 10s, count 5, user timeout off"
    assert PROFILES["os-default"].policy.describe() == "OS keepalive timings, user timeout off"
    assert Policy(enabled=False).describe() == "disabled"


def test_mode() -> None:
    assert (str(Mode.RESPECT), str(Mode.OVERRIDE)) == ("respect", "override")
    assert Mode("override") is Mode.OVERRIDE


# ---------------------------------------------------------------- property-based


@st.composite
def valid_policies(draw: st.DrawFn) -> Policy:
    timed = draw(st.booleans())
    idle = draw(st.integers(1, MAX_IDLE_S)) if timed else None
    interval = draw(st.integers(1, MAX_INTERVAL_S)) if timed else None
    count = draw(st.integers(1, MAX_COUNT)) if timed else None
    timeout = draw(st.one_of(st.sampled_from(["off", "auto"]), st.integers(1, MAX_USER_TIMEOUT_MS)))
    if timed and timeout == "auto" and (idle + interval * count) * 1000 > MAX_USER_TIMEOUT_MS:  # type: ignore[operator]
        timeout = "off"
    return Policy(
        idle=idle, interval=interval, count=count, user_timeout=timeout, enabled=draw(st.booleans())
    )


def as_text(policy: Policy, draw: st.DrawFn) -> dict[str, object]:
    """The policy written the way a person would, in a random unit."""

    def seconds(value: int) -> str:
        forms = [str(value), f"{value}s", f"{value * 1000}ms"]
        forms += [f"{value // 60}m"] if value % 60 == 0 else []
        forms += [f"{value // 3600}h"] if value % 3600 == 0 else []
        return draw(st.sampled_from(forms))

    text: dict[str, object] = {"enabled": draw(st.sampled_from(["true", "1", "yes", "on"]))}
    if not policy.enabled:
        text["enabled"] = draw(st.sampled_from(["false", "0", "no", "off", "FALSE"]))
    if policy.idle is not None:
        assert policy.interval is not None
        text.update(idle=seconds(policy.idle), interval=seconds(policy.interval), count=str(policy.count))
    else:
        text.update(idle=None, interval=None, count=None)
    timeout = policy.user_timeout
    text["user_timeout"] = timeout if isinstance(timeout, str) else f"{timeout}ms"
    return text


@given(st.data())
def test_random_valid_policies_survive_text_describe_and_compile(data: st.DataObject) -> None:
    policy = data.draw(valid_policies())
    assert Policy.parse(as_text(policy, data.draw)) == policy
    described = policy.describe()
    if policy.enabled and policy.idle is not None:
        assert f"idle {policy.idle}s, interval {policy.interval}s, count {policy.count}" in described
    for platform in ("linux", "darwin", "freebsd", "win32", "generic"):
        plan = compile_plan(policy, platform)
        assert plan.policy == policy
        assert plan.is_empty == (not policy.enabled)


junk = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.msh -+ \t"),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(),
    st.lists(st.integers(), max_size=3),
)


@given(field=st.sampled_from(["enabled", "idle", "interval", "count", "user_timeout"]), value=junk)
def test_junk_is_a_config_error_or_a_valid_policy(field: str, value: object) -> None:
    error: ConfigError | None = None
    try:
        policy = Policy().evolve(**{field: value})
    except ConfigError as raised:
        error = raised
    if error is None:
        assert isinstance(policy, Policy)
    else:
        assert field in error.setting  # "idle", or "idle/interval/count" for a partial policy


# ---------------------------------------------------------------- profiles


# The middlebox idle timeouts each profile is named for (RESEARCH.md): the profile must
# declare a vanished peer dead before that box forgets the flow.
IDLE_TIMEOUT_S = {
    "balanced": 240,  # the strictest listed: Azure LB / NAT Gateway
    "aws": 350,
    "azure": 240,
    "gcp": 600,
    "kubernetes": 240,
    "fast-failover": 30,
}


def test_the_profiles() -> None:
    assert set(PROFILES) == {*IDLE_TIMEOUT_S, "os-default"}
    assert DEFAULT_PROFILE == "balanced"
    for name, limit in IDLE_TIMEOUT_S.items():
        policy = PROFILES[name].policy
        assert policy.detection_bound_s is not None
        assert policy.detection_bound_s < limit, name
        assert PROFILES[name].reason
    os_default = PROFILES["os-default"].policy
    assert os_default.keeps_os_timings
    assert os_default.user_timeout_ms is None


def test_profile_names() -> None:
    assert get_profile(" AWS ").name == "aws"
    with pytest.raises(ConfigError) as raised:
        get_profile("awz", "KAPATCH_PROFILE")
    assert_one_clear_message(raised.value, "KAPATCH_PROFILE", "awz", ", ".join(PROFILES))
    with pytest.raises(ConfigError):
        get_profile(5)  # type: ignore[arg-type]
