"""heartbeat / heartbeat_timeout / max_idle: one policy, every source, and no silent gap."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

import kapatch
from kapatch import ConfigError, Policy
from kapatch.config import load_config
from kapatch.profiles import PROFILES
from kapatch.runtime import context


def test_off_by_default_and_in_the_default_profile() -> None:
    policy = load_config(environ={}).policy
    assert (policy.heartbeat, policy.max_idle, policy.heartbeat_timeout) == (None, None, "auto")
    assert (policy.heartbeat_s, policy.max_idle_s) == (None, None)


@pytest.mark.parametrize(
    ("timings", "deadline"),
    [({"interval": 10, "count": 5}, 50.0), ({"interval": 5, "count": 3}, 15.0)],
)
def test_the_heartbeat_deadline_defaults_to_interval_times_count(
    timings: dict[str, int], deadline: float
) -> None:
    assert Policy(idle=60, heartbeat=1000, **timings).heartbeat_timeout_s == deadline  # type: ignore[arg-type]
    assert Policy(heartbeat=1000, heartbeat_timeout=250).heartbeat_timeout_s == 0.25


def test_os_timings_give_the_linux_defaults_as_the_deadline() -> None:
    policy = PROFILES["os-default"].policy.evolve(heartbeat="5s")
    assert policy.heartbeat_timeout_s == 75 * 9


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("heartbeat", "0s", "from 1ms to 604800s"),
        ("heartbeat", "8d", "from 1ms to 604800s"),
        ("heartbeat", "auto", '"off", or a duration'),
        ("heartbeat_timeout", "off", '"auto", or a duration'),
        ("max_idle", "-5s", "from 1ms to 604800s"),
        ("max_idle", "soon", '"off", or a duration'),
    ],
)
def test_a_bad_value_names_the_setting_the_value_and_what_is_allowed(
    field: str, raw: str, message: str
) -> None:
    variable = f"KAPATCH_{field.upper()}"
    with pytest.raises(ConfigError) as raised:
        load_config(environ={variable: raw})
    text = str(raised.value)
    assert variable in text and repr(raw) in text and message in text
    assert "\n" not in text


def test_every_source_and_where_each_value_came_from(tmp_path: object) -> None:
    config = load_config(
        environ={"KAPATCH_HEARTBEAT": "30s", "KAPATCH_REDIS_MAX_IDLE": "2m"},
        heartbeat_timeout="3s",
        rules=[kapatch.Rule.build("*:5432", heartbeat="off")],
    )
    assert config.policy.heartbeat_s == 30.0 and config.policy.heartbeat_timeout_s == 3.0
    assert config.sources["heartbeat"] == "env KAPATCH_HEARTBEAT"
    assert config.sources["heartbeat_timeout"] == "argument"
    redis = config.for_adapter("redis")
    assert redis.policy.max_idle_s == 120.0 and redis.sources["max_idle"] == "env KAPATCH_REDIS_MAX_IDLE"
    assert config.rules[0].policy_for(config.policy).heartbeat is None


def test_profiles_that_turn_them_on_say_why() -> None:
    for name in ("aws", "azure", "gcp", "kubernetes"):
        assert PROFILES[name].policy.max_idle is not None and "max_idle" in PROFILES[name].reason
    for name in ("kubernetes", "fast-failover"):
        assert PROFILES[name].policy.heartbeat is not None and "heartbeat" in PROFILES[name].reason
    assert PROFILES["balanced"].policy.heartbeat is None and PROFILES["balanced"].policy.max_idle is None


def test_the_socket_options_do_not_change_with_the_pool_fields() -> None:
    from kapatch.sockopts import compile_plan

    plain = Policy(idle=30, interval=5, count=4)
    pooled = Policy(idle=30, interval=5, count=4, heartbeat=10_000, max_idle=60_000, heartbeat_timeout=900)
    assert compile_plan(plain).setsockopts == compile_plan(pooled).setsockopts


def test_status_counts_pool_events_per_adapter(install: Callable[..., kapatch.Status]) -> None:
    install(heartbeat="10s")
    context().count_pool("redis", "heartbeats_sent", 2)
    context().count_pool("redis", "heartbeats_failed")
    status = kapatch.status()
    assert dict(status.adapter("redis").pool) == {
        "heartbeats_sent": 2, "heartbeats_failed": 1, "replaced": 0, "evicted": 0,
    }  # fmt: skip
    assert status.adapter("urllib3").pool["heartbeats_sent"] == 0


def test_a_user_set_heartbeat_a_library_cannot_carry_is_said_once(
    install: Callable[..., kapatch.Status], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kapatch"):
        install(heartbeat="10s")
        kapatch.status()  # loads every adapter, as importing their libraries would
        kapatch.status()
    lines = [r.getMessage() for r in caplog.records if "not carried to" in r.getMessage()]
    assert "kapatch: heartbeat not carried to urllib3: the library has no mechanism" in "\n".join(lines)
    assert all(r.levelno == logging.WARNING for r in caplog.records if "not carried to" in r.getMessage())
    named = [line.split("not carried to ")[1].split(":")[0] for line in lines]
    assert len(named) == len(set(named))  # once per library
    assert not {"socket", "grpc", "redis", "psycopg_pool"} & set(named)  # no pool, or carried
    urllib3 = kapatch.status().adapter("urllib3")
    assert "heartbeat: NOT carried" in urllib3.pool_support
    assert "pools: heartbeat: NOT carried" in kapatch.status().render()


def test_a_profile_choice_is_a_notice_not_a_warning(
    install: Callable[..., kapatch.Status], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kapatch"):
        install(profile="kubernetes", log_level="info")
        kapatch.status()
    lines = [r for r in caplog.records if "not carried to" in r.getMessage()]
    assert lines and all(r.levelno == logging.INFO for r in lines)


def test_doctor_shows_each_pool_field_with_its_source_and_what_it_does() -> None:
    from kapatch.doctor import collect_report, render_report

    settings = {"environ": {"KAPATCH_HEARTBEAT": "5s", "KAPATCH_REDIS_MAX_IDLE": "1m"}}
    report = collect_report(settings, self_test=False)
    text = render_report(report)
    assert "heartbeat <- env KAPATCH_HEARTBEAT" in text
    assert "max_idle <- env KAPATCH_REDIS_MAX_IDLE" in text
    assert "pooled connections: heartbeat: NOT carried" in text  # a library without a mechanism
    assert report["configuration"]["adapters"]["socket"]["pools"] == "heartbeat: not applicable (no pool)"


def test_kapatch_profiles_lists_heartbeat_and_max_idle(capsys: pytest.CaptureFixture[str]) -> None:
    from kapatch.doctor import run_profiles

    assert run_profiles([]) == 0
    lines = {
        line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()
    }
    assert lines["profile"][-3:] == ["heartbeat", "max", "idle"]
    assert lines["kubernetes"][-2:] == ["60s", "200s"] and lines["balanced"][-2:] == ["off", "off"]
