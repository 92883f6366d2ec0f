"""Configuration sources: every KAPATCH_* variable and TOML key, their precedence, their errors.

Precedence, highest first: explicit arguments > environment > TOML file > profile > default.
Every call passes ``environ=`` so the machine's own environment never leaks in.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from checks import assert_one_clear_message
from hypothesis import given, settings
from hypothesis import strategies as st

from kapatch import PROFILES, Config, ConfigError, Mode, Policy, Rule, load_config
from kapatch._env import env_name
from kapatch._registry import adapter_names
from kapatch._settings import ADAPTER_FIELDS, GLOBAL_SETTINGS
from kapatch.rules import Destination, first_match

ADAPTERS = adapter_names()


def write(directory: Path, text: str | bytes, name: str = "kapatch.toml") -> str:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        load_config(**kwargs)  # type: ignore[arg-type]
    return raised.value


def test_no_source_gives_the_balanced_default() -> None:
    config = load_config(environ={})
    assert config.enabled is True
    assert config.profile == "balanced"
    assert config.policy == PROFILES["balanced"].policy
    assert config.mode is Mode.RESPECT
    assert (config.adapters, config.disabled_adapters, config.rules) == (None, frozenset(), ())
    assert (config.on_error, config.log_level, config.config_file) == ("warn", logging.WARNING, None)
    assert all(config.wants_adapter(name) for name in ADAPTERS)
    assert config.sources["idle"] == "profile balanced"
    assert config.sources["mode"] == "default"


def test_variables_outside_the_prefix_and_internal_ones_are_ignored() -> None:
    environ = {"KAPATCH__RUN_STATE": "x", "KAPATCHER": "x", "PATH": "/bin", "kapatch_idle": "nope"}
    assert load_config(environ=environ) == load_config(environ={})


def test_an_empty_variable_counts_as_unset() -> None:
    """Orchestrators often template empty strings."""
    assert load_config(environ={"KAPATCH_IDLE": "", "KAPATCH_PROFILE": "  "}).policy == Policy()


# ---------------------------------------------------------------- every variable

GLOBAL_CASES: list[tuple[str, str, Callable[[Config], object], object]] = [
    ("KAPATCH_ENABLED", "false", lambda c: (c.enabled, c.policy.enabled), (False, False)),
    ("KAPATCH_PROFILE", "aws", lambda c: (c.profile, c.policy), ("aws", PROFILES["aws"].policy)),
    ("KAPATCH_IDLE", "5m", lambda c: c.policy.idle, 300),
    ("KAPATCH_INTERVAL", "15s", lambda c: c.policy.interval, 15),
    ("KAPATCH_COUNT", "7", lambda c: c.policy.count, 7),
    ("KAPATCH_USER_TIMEOUT", "1500ms", lambda c: c.policy.user_timeout, 1500),
    ("KAPATCH_HEARTBEAT", "30s", lambda c: (c.policy.heartbeat, c.policy.heartbeat_s), (30_000, 30.0)),
    ("KAPATCH_HEARTBEAT_TIMEOUT", "1500ms", lambda c: c.policy.heartbeat_timeout_s, 1.5),
    ("KAPATCH_MAX_IDLE", "5m", lambda c: c.policy.max_idle_s, 300.0),
    ("KAPATCH_MODE", "override", lambda c: c.mode, Mode.OVERRIDE),
    ("KAPATCH_ADAPTERS", "redis, psycopg", lambda c: c.adapters, frozenset({"redis", "psycopg"})),
    ("KAPATCH_DISABLED_ADAPTERS", "*", lambda c: any(c.wants_adapter(n) for n in ADAPTERS), False),
    (
        "KAPATCH_EXCLUDE",
        "10.0.0.0/8, *.internal:5432",
        lambda c: [(r.action, r.matcher.text) for r in c.rules],
        [("skip", "10.0.0.0/8"), ("skip", "*.internal:5432")],
    ),
    ("KAPATCH_INBOUND", "1", lambda c: c.opted_in, frozenset({"inbound"})),
    ("KAPATCH_ON_ERROR", "raise", lambda c: c.on_error, "raise"),
    ("KAPATCH_LOG_LEVEL", "debug", lambda c: c.log_level, logging.DEBUG),
]


@pytest.mark.parametrize(("variable", "raw", "get", "wanted"), GLOBAL_CASES, ids=[c[0] for c in GLOBAL_CASES])
def test_every_global_variable(
    variable: str, raw: str, get: Callable[[Config], object], wanted: object
) -> None:
    config = load_config(environ={variable: raw})
    assert get(config) == wanted
    key = variable.removeprefix("KAPATCH_").lower()
    assert config.sources[key].endswith(f"env {variable})") or config.sources[key] == f"env {variable}"


def test_kapatch_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "gcp"\n')
    config = load_config(environ={"KAPATCH_CONFIG": path})
    assert (config.config_file, config.profile) == (path, "gcp")


def test_every_variable_is_covered() -> None:
    """A new setting without a case above makes this fail."""
    covered = {case[0] for case in GLOBAL_CASES} | {"KAPATCH_CONFIG"}
    assert covered == {env_name(key) for key in GLOBAL_SETTINGS}


ADAPTER_VALUES: dict[str, tuple[str, Callable[[object], object], object]] = {
    "enabled": ("false", lambda a: a.policy.enabled, False),  # type: ignore[attr-defined]
    "idle": ("7s", lambda a: a.policy.idle, 7),  # type: ignore[attr-defined]
    "interval": ("3", lambda a: a.policy.interval, 3),  # type: ignore[attr-defined]
    "count": ("2", lambda a: a.policy.count, 2),  # type: ignore[attr-defined]
    "user_timeout": ("900ms", lambda a: a.policy.user_timeout, 900),  # type: ignore[attr-defined]
    "heartbeat": ("20s", lambda a: a.policy.heartbeat, 20_000),  # type: ignore[attr-defined]
    "heartbeat_timeout": ("750ms", lambda a: a.policy.heartbeat_timeout, 750),  # type: ignore[attr-defined]
    "max_idle": ("2m", lambda a: a.policy.max_idle, 120_000),  # type: ignore[attr-defined]
    "profile": ("fast-failover", lambda a: a.policy, PROFILES["fast-failover"].policy),  # type: ignore[attr-defined]
    "mode": ("override", lambda a: a.mode, Mode.OVERRIDE),  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("field", sorted(ADAPTER_FIELDS))
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_per_adapter_variable(adapter: str, field: str) -> None:
    raw, get, wanted = ADAPTER_VALUES[field]
    variable = env_name(field, adapter)
    assert variable == f"KAPATCH_{adapter.upper()}_{field.upper()}"
    config = load_config(environ={variable: raw})
    assert get(config.for_adapter(adapter)) == wanted
    others = [name for name in ADAPTERS if name != adapter]
    for other in others:  # only that adapter changed
        assert config.for_adapter(other).policy == config.policy
        assert config.for_adapter(other).mode is config.mode
    assert config.policy == PROFILES["balanced"].policy


def test_an_adapter_profile_then_its_own_fields() -> None:
    config = load_config(environ={"KAPATCH_REDIS_PROFILE": "fast-failover", "KAPATCH_REDIS_IDLE": "20s"})
    assert config.for_adapter("redis").policy == Policy(idle=20, interval=5, count=3, heartbeat=10_000)
    assert config.for_adapter("redis").sources["idle"] == "env KAPATCH_REDIS_IDLE"
    assert config.for_adapter("redis").sources["count"] == "profile fast-failover (env KAPATCH_REDIS_PROFILE)"


# ---------------------------------------------------------------- every TOML key

FULL_TOML = """
enabled = true
profile = "azure"
idle = "90s"
interval = 10
count = 3
user_timeout = "auto"
heartbeat = "45s"
heartbeat_timeout = "2s"
max_idle = "off"
mode = "override"
adapters = ["redis", "psycopg", "socket"]
disabled_adapters = ["psycopg"]
exclude = ["10.0.0.0/8", "*.internal:5432"]
on_error = "raise"
log_level = "info"
inbound = true

[redis]
enabled = true
profile = "fast-failover"
idle = "20s"
interval = "2s"
count = 4
user_timeout = "off"
heartbeat = "off"
heartbeat_timeout = "auto"
max_idle = "90s"
mode = "respect"

[socket]
enabled = false

[[rule]]
match = "*.cache.example:6379"
profile = "fast-failover"
adapters = ["redis"]

[[rule]]
match = "[fd00::/8]"
skip = true

[[rule]]
match = "*:5432"
idle = "30s"
interval = "5s"
count = 2
user_timeout = "40s"
enabled = true
max_idle = "1m"
"""


def check_full(config: Config, path: str) -> None:
    assert config.enabled is True
    assert config.profile == "azure"
    # azure's max_idle is turned off by the file; its heartbeat is the file's own
    assert config.policy == Policy(
        idle=90, interval=10, count=3, user_timeout="auto", heartbeat=45_000, heartbeat_timeout=2000
    )
    assert config.sources["heartbeat"] == f"file {path}: heartbeat"
    assert config.mode is Mode.OVERRIDE
    assert config.adapters == frozenset({"redis", "psycopg", "socket"})
    assert config.disabled_adapters == frozenset({"psycopg"})
    assert (
        config.wants_adapter("redis"),
        config.wants_adapter("psycopg"),
        config.wants_adapter("urllib3"),
    ) == (
        True,
        False,
        False,
    )
    assert (config.on_error, config.log_level, config.config_file) == ("raise", logging.INFO, path)
    redis = config.for_adapter("redis")
    # fast-failover's heartbeat is turned off by the [redis] table
    assert redis.policy == Policy(idle=20, interval=2, count=4, user_timeout="off", max_idle=90_000)
    assert redis.mode is Mode.RESPECT
    assert config.for_adapter("socket").policy.enabled is False
    assert config.for_adapter("psycopg").policy == config.policy
    assert [rule.describe() for rule in config.rules] == [
        "10.0.0.0/8 -> skip",
        "*.internal:5432 -> skip",
        "*.cache.example:6379 -> profile fast-failover (adapters: redis)",
        "[fd00::/8] -> skip",
        "*:5432 -> idle=30, interval=5, count=2, user_timeout=40000, enabled=True, max_idle=60000",
    ]
    assert config.sources["idle"] == f"file {path}: idle"
    assert redis.sources["idle"] == f"file {path}: [redis] idle"


def test_every_toml_key(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    check_full(load_config(environ={"KAPATCH_CONFIG": path}), path)
    check_full(load_config(environ={}, config=path), path)  # the argument form


def test_pyproject_tool_kapatch(tmp_path: Path) -> None:
    tables = FULL_TOML.replace("[redis]", "[tool.kapatch.redis]").replace("[socket]", "[tool.kapatch.socket]")
    tables = tables.replace("[[rule]]", "[[tool.kapatch.rule]]")
    text = '[project]\nname = "app"\n\n[tool.other]\nidle = "nonsense"\n\n[tool.kapatch]\n' + tables
    path = write(tmp_path, text, "pyproject.toml")
    check_full(load_config(environ={"KAPATCH_CONFIG": path}), path)


@pytest.mark.parametrize("text", ['[project]\nname = "app"\n', "tool = 5\n", ""])
def test_a_pyproject_without_kapatch_settings_sets_nothing(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, "pyproject.toml")
    assert load_config(environ={"KAPATCH_CONFIG": path}).policy == Policy()


def test_a_non_table_tool_kapatch_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[tool]\nkapatch = 5\n", "pyproject.toml")
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": path}), f"{path}: tool.kapatch", 5, "a table"
    )


def test_every_toml_key_is_covered() -> None:
    """A new setting without a line in FULL_TOML makes this fail."""
    top = {
        line.split("=")[0].strip()
        for line in FULL_TOML.split("[redis]", maxsplit=1)[0].splitlines()
        if "=" in line
    }
    assert top == set(GLOBAL_SETTINGS) - {"config"}
    redis = FULL_TOML.split("[redis]")[1].split("[socket]", maxsplit=1)[0]
    assert {line.split("=")[0].strip() for line in redis.splitlines() if "=" in line} == set(ADAPTER_FIELDS)


# ---------------------------------------------------------------- precedence


def test_each_source_beats_the_ones_below(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "gcp"\nidle = "100s"\ninterval = "9s"\ncount = 8\nmode = "override"\n')
    environ = {"KAPATCH_CONFIG": path, "KAPATCH_IDLE": "50s", "KAPATCH_INTERVAL": "4s"}
    config = load_config(environ=environ, idle="25s")
    assert config.profile == "gcp"  # only the file names one
    assert config.policy == Policy(idle=25, interval=4, count=8, user_timeout="auto", max_idle=540_000)
    assert config.mode is Mode.OVERRIDE
    assert config.sources["idle"] == "argument"
    assert config.sources["interval"] == "env KAPATCH_INTERVAL"
    assert config.sources["count"] == f"file {path}: count"
    assert config.sources["user_timeout"] == f"profile gcp (file {path}: profile)"


def test_the_highest_source_naming_a_profile_chooses_it_and_explicit_fields_still_win(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "gcp"\ncount = 9\n')
    config = load_config(environ={"KAPATCH_CONFIG": path, "KAPATCH_PROFILE": "aws"})
    assert config.profile == "aws"
    assert config.policy == PROFILES["aws"].policy.evolve(count=9)


def test_the_config_argument_beats_kapatch_config(tmp_path: Path) -> None:
    env_file = write(tmp_path, 'profile = "gcp"\n', "env.toml")
    arg_file = write(tmp_path, 'profile = "azure"\n', "arg.toml")
    config = load_config(environ={"KAPATCH_CONFIG": env_file}, config=arg_file)
    assert (config.config_file, config.profile) == (arg_file, "azure")


def test_adapter_precedence(tmp_path: Path) -> None:
    """An adapter's own setting beats a global one from any source; among its own, the usual order."""
    path = write(tmp_path, '[redis]\nidle = "30s"\ncount = 6\ninterval = "8s"\n[psycopg]\nidle = "44s"\n')
    environ = {"KAPATCH_CONFIG": path, "KAPATCH_IDLE": "99s", "KAPATCH_REDIS_COUNT": "2"}
    config = load_config(environ=environ, idle="77s", overrides={"redis": {"interval": "3s"}})
    assert config.policy.idle == 77
    redis = config.for_adapter("redis")
    assert (redis.policy.idle, redis.policy.count, redis.policy.interval) == (30, 2, 3)
    assert (redis.sources["idle"], redis.sources["count"], redis.sources["interval"]) == (
        f"file {path}: [redis] idle",
        "env KAPATCH_REDIS_COUNT",
        "argument",
    )
    assert config.for_adapter("psycopg").policy.idle == 44
    assert config.for_adapter("socket").policy.idle == 77


def test_rules_from_every_source_are_kept_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, '[[rule]]\nmatch = "*:6379"\nprofile = "fast-failover"\n')
    config = load_config(
        environ={"KAPATCH_CONFIG": path, "KAPATCH_EXCLUDE": "10.0.0.0/8"},
        rules=[Rule.build("*:5432", idle="5s", interval="1s", count=2)],
    )
    assert [rule.matcher.text for rule in config.rules] == ["10.0.0.0/8", "*:5432", "*:6379"]
    found = first_match(config.rules, "redis", Destination("cache", "10.1.1.1", 6379))
    assert found is not None and found.action == "skip"


SOURCES = ("argument", "env", "file")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_precedence_for_random_sources(data: st.DataObject) -> None:
    """Each field comes from the highest source that sets it, else from the chosen profile."""
    timed = [name for name in PROFILES if name != "os-default"]
    values = {
        "idle": st.integers(1, 900).map(lambda v: (f"{v}s", v)),
        "interval": st.integers(1, 60).map(lambda v: (f"{v * 1000}ms", v)),
        "count": st.integers(1, 20).map(lambda v: (str(v), v)),
        "user_timeout": st.one_of(
            st.sampled_from([("off", "off"), ("auto", "auto")]),
            st.integers(1, 10**6).map(lambda v: (f"{v}ms", v)),
        ),
        "mode": st.sampled_from([("respect", Mode.RESPECT), ("override", Mode.OVERRIDE)]),
        "profile": st.sampled_from(timed).map(lambda v: (v, v)),
    }
    chosen: dict[str, dict[str, tuple[str, object]]] = {source: {} for source in SOURCES}
    for key, strategy in values.items():
        for source in data.draw(st.sets(st.sampled_from(SOURCES)), label=key):
            chosen[source][key] = data.draw(strategy, label=f"{source} {key}")

    def highest(key: str) -> object | None:
        for source in SOURCES:
            if key in chosen[source]:
                return chosen[source][key][1]
        return None

    with tempfile.TemporaryDirectory() as directory:
        path = write(
            Path(directory), "".join(f'{key} = "{raw}"\n' for key, (raw, _) in chosen["file"].items())
        )
        environ = {f"KAPATCH_{key.upper()}": raw for key, (raw, _) in chosen["env"].items()}
        environ["KAPATCH_CONFIG"] = path
        arguments = {key: raw for key, (raw, _) in chosen["argument"].items()}
        config = load_config(environ=environ, **arguments)

    profile = highest("profile") or "balanced"
    assert config.profile == profile
    base = PROFILES[str(profile)].policy
    for field in ("idle", "interval", "count", "user_timeout"):
        wanted = highest(field)
        assert getattr(config.policy, field) == (getattr(base, field) if wanted is None else wanted), field
    assert config.mode is (highest("mode") or Mode.RESPECT)


# ---------------------------------------------------------------- bad values: one clear message each


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    [
        ("KAPATCH_IDLE", "abc", "a duration"),  # not a number
        ("KAPATCH_IDLE", "-5", "must not be negative"),
        ("KAPATCH_IDLE", "0", "1s to 32767s"),
        ("KAPATCH_IDLE", "32768", "1s to 32767s"),  # above the kernel limit
        ("KAPATCH_INTERVAL", "1.5", "in whole seconds"),
        ("KAPATCH_COUNT", "128", "from 1 to 127"),
        ("KAPATCH_COUNT", "0", "from 1 to 127"),
        ("KAPATCH_COUNT", "five", "from 1 to 127"),
        ("KAPATCH_USER_TIMEOUT", "0", 'use "off"'),
        ("KAPATCH_USER_TIMEOUT", "2147483648ms", "2147483647ms"),
        ("KAPATCH_ENABLED", "maybe", "true/false"),
        ("KAPATCH_PROFILE", "awz", "one of balanced, aws"),  # unknown profile
        ("KAPATCH_MODE", "force", "respect or override"),
        ("KAPATCH_ADAPTERS", "redis,foo", "adapters are"),  # unknown adapter
        ("KAPATCH_ADAPTERS", "redis,,psycopg", "remove the stray comma"),
        ("KAPATCH_DISABLED_ADAPTERS", "foo", "adapters are"),
        ("KAPATCH_EXCLUDE", "10.0.0.0/33", "malformed CIDR"),
        ("KAPATCH_EXCLUDE", "*:99999", "is not 1-65535"),
        ("KAPATCH_ON_ERROR", "ignore", "warn (log and carry on) or raise"),
        ("KAPATCH_LOG_LEVEL", "verbose", "one of debug, info, warning, error, critical"),
        ("KAPATCH_REDIS_IDLE", "0", "1s to 32767s"),
        ("KAPATCH_REDIS_PROFILE", "nope", "one of balanced"),
        ("KAPATCH_REDIS_MODE", "x", "respect or override"),
        ("KAPATCH_IDEL", "5", "not a kapatch setting; did you mean KAPATCH_IDLE?"),  # unknown variable
        ("KAPATCH_REDIS_IDEL", "5", "did you mean KAPATCH_REDIS_IDLE?"),
        ("KAPATCH_PROFLE", "aws", "did you mean KAPATCH_PROFILE?"),
        ("KAPATCH_NONSENSE_THING", "1", "not a kapatch setting"),
    ],
)
def test_bad_variables(variable: str, raw: str, allowed: str) -> None:
    assert_one_clear_message(error_of(environ={variable: raw}), variable, raw, allowed)


def test_bad_file_values_name_the_file_and_key(tmp_path: Path) -> None:
    cases = [
        ("idle = 0\n", "idle", 0, "1s to 32767s"),
        ("count = 2.5\n", "count", 2.5, "from 1 to 127"),
        ('profile = "awz"\n', "profile", "awz", "one of balanced"),
        ('adapters = ["redis", "foo"]\n', "adapters", "redis,foo", "adapters are"),
        ('exclude = ["10.0.0.0/33"]\n', "exclude", "10.0.0.0/33", "malformed CIDR"),
        ("[redis]\nidle = -1\n", "[redis] idle", -1, "must not be negative"),
        ('[[rule]]\nmatch = "*"\nidle = "0"\ninterval = 1\ncount = 1\n', "[[rule]] #1.idle", "0", "1s"),
        ('[[rule]]\nmatch = "10.0.0.0/99"\nskip = true\n', "[[rule]] #1.match", "10.0.0.0/99", "malformed"),
        ('[[rule]]\nmatch = "*"\nskip = "yes"\n', "[[rule]] #1 skip", "yes", "true or false"),
        (
            '[[rule]]\nmatch = "*"\nskip = true\nadapters = ["foo"]\n',
            "[[rule]] #1 adapters",
            ["foo"],
            "a list of",
        ),
        ("[[rule]]\nskip = true\n", "[[rule]] #1", {"skip": True}, "a rule needs match"),
        ('rule = "x"\n', "rule", "x", "an array of tables: [[rule]]"),
        ("redis = 5\n", "redis", 5, "a table of redis's own settings"),
        ('config = "other.toml"\n', "config", "other.toml", "cannot name another"),
    ]
    for number, (text, key, value, allowed) in enumerate(cases):
        path = write(tmp_path, text, f"bad{number}.toml")
        error = error_of(environ={"KAPATCH_CONFIG": path})
        assert_one_clear_message(error, f"{path}: {key}", value, allowed)


@pytest.mark.parametrize(
    ("text", "key", "value", "allowed"),
    [
        ("idel = 5\n", "idel", 5, "unknown key; did you mean idle?; keys are enabled, idle"),
        ("[redis]\nidel = 5\n", "[redis] idel", 5, "did you mean idle?; an adapter table takes"),
        ("[rediss]\nidle = 5\n", "rediss", {"idle": 5}, "did you mean redis?"),
        ('[[rule]]\nmatch = "*"\nidel = 5\n', "[[rule]] #1 idel", 5, "did you mean idle?; a rule takes"),
    ],
    ids=["top-level", "adapter-table", "unknown-adapter-table", "rule"],
)
def test_unknown_toml_keys(tmp_path: Path, text: str, key: str, value: object, allowed: str) -> None:
    path = write(tmp_path, text)
    assert_one_clear_message(error_of(environ={"KAPATCH_CONFIG": path}), f"{path}: {key}", value, allowed)


def test_unreadable_toml(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": missing}), "KAPATCH_CONFIG", missing, "No such file"
    )
    assert_one_clear_message(error_of(config=missing, environ={}), "config", missing, "No such file")
    bad_syntax = write(tmp_path, "idle = \n", "syntax.toml")
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": bad_syntax}), "KAPATCH_CONFIG", bad_syntax, "not valid TOML"
    )
    bad_utf8 = write(tmp_path, b'profile = "\xff"\n', "utf8.toml")
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": bad_utf8}), "KAPATCH_CONFIG", bad_utf8, "not valid TOML", "utf-8"
    )
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": str(tmp_path)}),
        "KAPATCH_CONFIG",
        str(tmp_path),
        "not a regular file (a directory); it must be a regular TOML file of at most 1 MiB",
    )


# ---------------------------------------------------------------- files that are not config files


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)
    return str(path)


@pytest.mark.timeout(20)  # the old code blocked in open() until a writer came: forever
def test_a_fifo_is_refused_without_blocking(fifo: str) -> None:
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": fifo}), "KAPATCH_CONFIG", fifo, "not a regular file (a FIFO)"
    )
    assert_one_clear_message(error_of(environ={}, config=fifo), "config", fifo, "a regular TOML file")


@pytest.mark.timeout(20)  # /dev/zero never ends: the old code read until MemoryError
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/full", "/dev/null"])
def test_a_device_is_refused(device: str) -> None:
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": device}),
        "KAPATCH_CONFIG",
        device,
        "not a regular file (a character device); it must be a regular TOML file of at most 1 MiB",
    )


def test_a_file_over_one_mib_is_refused_and_one_at_the_bound_is_read(tmp_path: Path) -> None:
    from kapatch._toml import MAX_FILE_BYTES

    line = b'profile = "aws"\n'
    at_bound = write(tmp_path, line + b"#" * (MAX_FILE_BYTES - len(line) - 1) + b"\n", "big.toml")
    assert os.path.getsize(at_bound) == MAX_FILE_BYTES
    assert load_config(environ={"KAPATCH_CONFIG": at_bound}).profile == "aws"
    over = write(tmp_path, line + b"#" * MAX_FILE_BYTES, "huge.toml")
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": over}), "KAPATCH_CONFIG", over, "bytes; it must be a regular"
    )


def test_a_symlink_to_a_regular_file_is_read_and_one_to_a_device_is_not(tmp_path: Path) -> None:
    target = write(tmp_path, 'profile = "gcp"\n')
    (tmp_path / "link.toml").symlink_to(target)
    assert load_config(environ={"KAPATCH_CONFIG": str(tmp_path / "link.toml")}).profile == "gcp"
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    assert "character device" in str(error_of(environ={"KAPATCH_CONFIG": str(tmp_path / "zero.toml")}))


# ---------------------------------------------------------------- numbers too long for int()


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    [
        ("KAPATCH_COUNT", "7" * 5000, "a whole number of probes from 1 to 127"),
        ("KAPATCH_REDIS_COUNT", "0" * 4999 + "5", "a whole number of probes"),
        ("KAPATCH_IDLE", "9" * 5000, "a duration"),
        ("KAPATCH_USER_TIMEOUT", "9" * 5000 + "ms", "a duration"),
        ("KAPATCH_EXCLUDE", "*:" + "1" * 5000, "longer than 300 characters"),
        ("KAPATCH_EXCLUDE", "*:" + "1" * 200, "port '11111"),
        ("KAPATCH_EXCLUDE", "10.0.0.0/" + "8" * 5000, "longer than 300 characters"),
    ],
)
def test_numbers_with_thousands_of_digits_are_the_one_clear_error(
    variable: str, raw: str, allowed: str
) -> None:
    error = error_of(environ={variable: raw})
    message = str(error)
    assert error.setting == variable
    assert message.startswith(f"{variable}='{raw[:20]}"), message
    assert allowed in message
    assert "\n" not in message and len(message) < 1000  # the value is shown shortened


@pytest.mark.parametrize("value", [10**5000, -(10**5000), 2**64], ids=["huge", "-huge", "2**64"])
@pytest.mark.parametrize("key", ["idle", "interval", "count", "user_timeout"])
def test_huge_int_arguments_are_config_errors(key: str, value: int) -> None:
    error = error_of(environ={}, **{key: value})
    assert error.setting == key
    assert error.value == value
    assert len(str(error)) < 1000


def test_a_huge_toml_integer_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "count = " + "3" * 5000 + "\n")
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": path}),
        "KAPATCH_CONFIG",
        path,
        "not valid TOML: a number with thousands of digits",
    )
    within_limit = write(tmp_path, "idle = " + "3" * 4000 + "\n", "long.toml")
    message = str(error_of(environ={"KAPATCH_CONFIG": within_limit}))
    assert message.startswith(f"{within_limit}: idle=<int of about 4000 digits>: a duration"), message


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "x = " + "{ a = " * 3000 + "1" + " }" * 3000 + "\n",
    ],
    ids=["arrays", "inline-tables"],
)
def test_deeply_nested_toml_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert_one_clear_message(
        error_of(environ={"KAPATCH_CONFIG": path}), "KAPATCH_CONFIG", path, "nested too deeply"
    )


# The forked child only drops privileges, parses one file and _exits: no lock it could inherit.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "aws"\n')
    os.chmod(path, 0)
    if os.geteuid() != 0:
        assert "Permission denied" in str(error_of(environ={"KAPATCH_CONFIG": path}))
        return
    # Root reads every file (and CI runs as root): read it as nobody, in a forked child.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, str(error_of(environ={"KAPATCH_CONFIG": path})).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message.startswith(f"KAPATCH_CONFIG={path!r}: cannot read the file"), message
    assert "Permission denied" in message


@pytest.mark.parametrize(
    ("kwargs", "setting", "value", "allowed"),
    [
        ({"idel": "5"}, "idel", "5", "not a kapatch setting; settings are enabled"),
        ({"overrides": {"rediss": {"idle": 5}}}, "overrides", "rediss", "an adapter:"),
        ({"overrides": {"redis": {"idel": 5}}}, "overrides['redis']['idel']", 5, "one of enabled, idle"),
        ({"rules": ["10.0.0.0/8"]}, "rules", "10.0.0.0/8", "kapatch.Rule objects"),
        ({"profile": 5}, "profile", 5, "a profile name"),
        ({"adapters": ["foo"]}, "adapters", "foo", "adapters are"),  # was named 'argument'
        ({"overrides": {"redis": 5}}, "overrides['redis']", 5, "a mapping of redis's settings"),
        ({"overrides": ["redis"]}, "overrides", ["redis"], "a mapping of adapter name to settings"),
        ({"rules": 5}, "rules", 5, "a list of kapatch.Rule objects"),
        ({"rules": "10.0.0.0/8"}, "rules", "10.0.0.0/8", "a list of kapatch.Rule objects"),
        ({"environ": 5}, "environ", 5, "a mapping of variable names to strings"),
        ({"environ": {5: "x"}}, "environ", 5, "variable names are strings"),
        ({"environ": {"KAPATCH_IDLE": 5}}, "KAPATCH_IDLE", 5, "a string, as os.environ holds"),
        (
            {"rules": [Rule.build("*", skip=True, adapters=["rediss"])]},
            "rule * adapters",
            "rediss",
            "adapters are",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], setting: str, value: object, allowed: str) -> None:
    assert_one_clear_message(error_of(**{"environ": {}, **kwargs}), setting, value, allowed)


def test_rules_none_means_no_rules() -> None:
    assert load_config(environ={}, rules=None).rules == ()


@pytest.mark.parametrize(
    ("kwargs", "setting", "value", "allowed"),
    [
        ({"skip": True, "adapters": 5}, "rule.adapters", 5, "a list of adapter names"),
        ({"skip": True, "adapters": "redis"}, "rule.adapters", "redis", "a list of adapter names"),
        ({"skip": True, "adapters": [5]}, "rule.adapters", [5], "a list of adapter names"),
        ({"skip": "yes"}, "rule.skip", "yes", "True or False"),
        ({"profile": ["aws"]}, "rule.profile", ["aws"], "a profile name"),
        ({"skip": True, "source": 5}, "rule.source", 5, "a string"),
    ],
)
def test_rule_build_checks_its_argument_types(
    kwargs: dict[str, object], setting: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Rule.build("*", **kwargs)  # type: ignore[arg-type]
    assert_one_clear_message(raised.value, setting, value, allowed)


def test_a_hand_made_rule_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"rule\.matcher='x': a Matcher"):
        Rule(matcher="x")  # type: ignore[arg-type]
    matcher = Rule.build("*", skip=True).matcher
    with pytest.raises(ConfigError, match=r"rule\.idle=0"):
        Rule(matcher=matcher, changes=(("idle", 0),))
    with pytest.raises(ConfigError, match=r"rule\.adapters"):
        Rule(matcher=matcher, action="skip", adapters={"redis"})  # type: ignore[arg-type]


def test_a_combination_names_its_sources(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "os-default"\n')
    error = error_of(environ={"KAPATCH_CONFIG": path, "KAPATCH_IDLE": "5s"})
    assert error.setting == "idle/interval/count (env KAPATCH_IDLE)"
    assert "give all three, or none of them" in str(error)


def test_a_rule_that_makes_an_invalid_policy_fails_at_load_not_at_connect() -> None:
    error = error_of(environ={"KAPATCH_PROFILE": "os-default"}, rules=[Rule.build("*:6379", idle="5s")])
    assert error.setting.startswith("rule *:6379 (argument;")
    assert "give all three" in str(error)
    # the same rule is fine on a timed policy, and for an adapter it does not apply to
    assert load_config(environ={}, rules=[Rule.build("*:6379", idle="5s")]).rules
    only_redis = Rule.build("*:6379", idle="5s", adapters=["redis"])
    assert load_config(environ={"KAPATCH_PSYCOPG_PROFILE": "os-default"}, rules=[only_redis]).rules


# ---------------------------------------------------------------- junk never crashes

ENV_NAMES = sorted(
    [env_name(key) for key in GLOBAL_SETTINGS if key != "config"]
    + [env_name(key, adapter) for adapter in ADAPTERS for key in ADAPTER_FIELDS]
    + ["KAPATCH_IDEL", "KAPATCH_X", "KAPATCH_"]
)


def only_config_errors(call: Callable[[], object]) -> Iterator[ConfigError]:
    try:
        call()
    except ConfigError as error:
        yield error


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=30), max_size=4))
def test_junk_variables_give_a_config_or_a_config_error(environ: dict[str, str]) -> None:
    # KAPATCH_CONFIG is left out: a random path could name a device file.
    for error in only_config_errors(lambda: load_config(environ=environ)):
        assert error.setting
        assert "\n" not in str(error) or error.setting.startswith("KAPATCH_CONFIG")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_junk_variable_names(name: str, value: str) -> None:
    for error in only_config_errors(lambda: load_config(environ={"KAPATCH_" + name: value})):
        assert error.setting


toml_values = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.floats().map(repr),  # includes inf and nan, which TOML also spells that way
    st.text(max_size=20).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(["true", "false", "[]", '["redis"]', "{}", "[1, 2]", "{ idle = 5 }"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*GLOBAL_SETTINGS, "rule", *ADAPTERS, "idel", "x"]),
            toml_values,
        ),
        max_size=4,
    ),
    st.binary(max_size=40),
)
def test_junk_toml_gives_a_config_or_a_config_error(pairs: list[tuple[str, str]], noise: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        good = write(Path(directory), "".join(f"{key} = {value}\n" for key, value in dict(pairs).items()))
        noisy = write(Path(directory), noise, "noise.toml")
        for path in (good, noisy):
            for error in only_config_errors(lambda path=path: load_config(environ={"KAPATCH_CONFIG": path})):
                assert error.setting
