"""Property tests over every configuration source: any input is a Config or exactly one ConfigError.

Sources: the environment mapping, TOML text, the keyword arguments of load_config() and
install(), Rule.build() and Rule(). Values are drawn from everything a caller could pass:
wrong types, huge integers (past Python's 4,300-digit str() limit), very long text,
nesting past the recursion limit, objects whose repr raises. Whatever comes out must be a
ConfigError whose setting names what was wrong; nothing else may escape.

The automatic path is fuzzed too: fresh interpreters with random KAPATCH_* variables
(and KAPATCH_CONFIG naming FIFOs, devices, directories, broken files) must run the program
and print at most one kapatch line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kapatch
from kapatch import Config, ConfigError, Policy, Rule, load_config
from kapatch._env import env_name
from kapatch._registry import adapter_names
from kapatch._settings import ADAPTER_FIELDS, GLOBAL_SETTINGS
from kapatch.policy import POLICY_FIELDS

ADAPTERS = adapter_names()


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    __str__ = __repr__


# Built on draw, by index: hypothesis would repr() the values of a sampled_from itself.
ODD_VALUES: list[Callable[[], object]] = [
    lambda: 10**5000,
    lambda: -(10**5000),
    lambda: 2**64,
    lambda: "9" * 5000,
    lambda: "*:" + "1" * 5000,
    lambda: "1" * 5000 + "ms",
    lambda: _nested(50_000),  # past the recursion limit for repr() and for any recursive walk
    BrokenRepr,
    lambda: b"45s",
    lambda: float("nan"),
    lambda: float("inf"),
    lambda: 1e308,
    object,
    lambda: Policy,
    lambda: kapatch.Mode.OVERRIDE,
]


class Odd:
    """A placeholder hypothesis can print; :func:`real` turns it into the odd value."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"Odd({self.index})"


def real(value: object) -> object:
    if isinstance(value, Odd):
        return ODD_VALUES[value.index]()
    if isinstance(value, list):
        return [real(v) for v in value]
    if isinstance(value, tuple):
        return tuple(real(v) for v in value)
    if isinstance(value, dict):
        return {k: real(v) for k, v in value.items()}
    return value


odd_values = st.integers(0, len(ODD_VALUES) - 1).map(Odd)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["45s", "1500ms", "auto", "off", "redis", "respect", "aws", "*:6379", "10.0.0.0/8", "true"]
    ),
    odd_values,
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3),
        st.frozensets(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    ),
    max_leaves=6,
)


def outcome(call: Callable[[], object]) -> ConfigError | None:
    """Run *call*; a ConfigError is returned, anything else but success fails the test."""
    try:
        call()
    except ConfigError as raised:
        error = raised
    else:
        return None
    message = str(error)
    assert error.setting and message.startswith(error.setting), message
    assert len(message) < 5000, message[:300]  # a value is shown shortened
    return error


# ---------------------------------------------------------------- keyword arguments


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(set(GLOBAL_SETTINGS) - {"config"})), anything, max_size=3))
def test_load_config_arguments(arguments: dict[str, object]) -> None:
    arguments = {key: real(value) for key, value in arguments.items()}
    error = outcome(lambda: load_config(environ={}, **arguments))
    if error is not None:
        assert any(key in error.setting for key in arguments) or "idle/interval/count" in error.setting, error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        anything,
        st.dictionaries(
            st.one_of(st.sampled_from(ADAPTERS), st.text(max_size=6), st.integers()),
            st.one_of(
                anything, st.dictionaries(st.sampled_from([*ADAPTER_FIELDS, "idel"]), anything, max_size=3)
            ),
            max_size=3,
        ),
    )
)
def test_load_config_overrides(overrides: object) -> None:
    overrides = real(overrides)
    error = outcome(lambda: load_config(environ={}, overrides=overrides))  # type: ignore[arg-type]
    if error is not None:
        assert error.setting.startswith("overrides") or "idle/interval/count" in error.setting, error


@settings(max_examples=200, deadline=None)
@given(st.one_of(anything, st.lists(st.one_of(anything, st.just(Rule.build("*", skip=True))), max_size=3)))
def test_load_config_rules(rules: object) -> None:
    rules = real(rules)
    error = outcome(lambda: load_config(environ={}, rules=rules))  # type: ignore[arg-type]
    if error is not None:
        assert error.setting.startswith(("rules", "rule")), error


def test_install_takes_the_same_checks_and_raises_only_config_errors() -> None:
    calls: list[Callable[[], object]] = [
        lambda: kapatch.install(environ={}, overrides={"redis": 5}),  # type: ignore[dict-item]
        lambda: kapatch.install(environ={}, rules=5),
        lambda: kapatch.install(environ={}, idle=10**5000),
        lambda: kapatch.install(environ={}, exclude=["*:" + "9" * 5000]),
        lambda: kapatch.install(environ=5),  # type: ignore[arg-type]
        lambda: kapatch.install(environ={"KAPATCH_IDLE": 5}),  # type: ignore[dict-item]
    ]
    try:
        for call in calls:
            assert outcome(call) is not None
        assert outcome(lambda: kapatch.install(environ={}, rules=None)) is None  # None: no rules
    finally:
        kapatch.uninstall()


# ---------------------------------------------------------------- the environment mapping

ENV_NAMES = sorted(
    [env_name(key) for key in GLOBAL_SETTINGS if key != "config"]
    + [env_name(key, adapter) for adapter in ADAPTERS for key in ADAPTER_FIELDS]
)
long_numbers = st.integers(1, 6000).map(lambda n: "7" * n)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(ENV_NAMES), st.text(max_size=10), st.integers()),
        st.one_of(st.text(max_size=20), long_numbers, long_numbers.map(lambda t: "*:" + t), anything),
        max_size=4,
    )
)
def test_environ_mappings(environ: dict[object, object]) -> None:
    environ = {key: real(value) for key, value in environ.items()}
    error = outcome(lambda: load_config(environ=environ))  # type: ignore[arg-type]
    if error is not None:
        named = [str(k) for k in environ if isinstance(k, str) and k.startswith("KAPATCH_")]
        assert (
            error.setting == "environ" or any(n in error.setting for n in named) or "(env " in error.setting
        )


# ---------------------------------------------------------------- TOML text


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value).replace("inf", "inf").replace("nan", "nan")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"k{i} = {toml_value(v)}" for i, v in enumerate(value.values())) + " }"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


toml_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=12),
        st.sampled_from(["45s", "auto", "redis", "*:6379", "raise", "warn"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=5,
).map(toml_value)
raw_toml_values = st.one_of(
    toml_values,
    st.integers(4000, 6000).map(lambda n: "3" * n),  # past int()'s limit from 4,301 digits
    st.integers(10, 4000).map(lambda n: "[" * n + "]" * n),  # past tomllib's recursion limit
)
toml_keys = st.sampled_from([*GLOBAL_SETTINGS, "rule", *ADAPTERS, "idel"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(toml_keys, raw_toml_values), max_size=4),
    st.lists(
        st.tuples(
            st.sampled_from([*ADAPTERS, "rediss"]), st.sampled_from([*ADAPTER_FIELDS, "x"]), raw_toml_values
        ),
        max_size=2,
    ),
    st.booleans(),
)
def test_toml_text(
    pairs: list[tuple[str, str]], tables: list[tuple[str, str, str]], as_pyproject: bool
) -> None:
    text = "".join(f"{key} = {value}\n" for key, value in dict(pairs).items())
    for adapter, key, value in tables:
        text += f"[{adapter}]\n{key} = {value}\n"
    if as_pyproject:
        text = "[tool.kapatch]\n" + text.replace("\n[", "\n[tool.kapatch.")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ("pyproject.toml" if as_pyproject else "kapatch.toml")
        path.write_text(text, encoding="utf-8")
        error = outcome(lambda: load_config(environ={"KAPATCH_CONFIG": str(path)}))
        if error is not None:
            assert (
                str(path) in error.setting or error.setting == "KAPATCH_CONFIG" or "(file " in error.setting
            )


# ---------------------------------------------------------------- Rule.build and Rule()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    anything,
    st.one_of(st.booleans(), anything),
    st.one_of(st.none(), st.sampled_from(["aws", "nope"]), anything),
    st.one_of(st.none(), st.just(["redis"]), anything),
    st.dictionaries(st.sampled_from([*POLICY_FIELDS, "idel"]), anything, max_size=2),
)
def test_rule_build(
    match: object, skip: object, profile: object, adapters: object, changes: dict[str, object]
) -> None:
    match, skip, profile, adapters = (real(v) for v in (match, skip, profile, adapters))
    changes = {key: real(value) for key, value in changes.items()}

    def build() -> Rule:
        return Rule.build(match, skip=skip, profile=profile, adapters=adapters, **changes)  # type: ignore[arg-type]

    error = outcome(build)
    if error is not None:
        assert error.setting.startswith("rule"), error


@settings(max_examples=200, deadline=None)
@given(anything, anything, anything, anything, anything)
def test_rule_constructor(
    matcher: object, action: object, profile: object, changes: object, adapters: object
) -> None:
    matcher, action, profile, changes, adapters = (
        real(v) for v in (matcher, action, profile, changes, adapters)
    )
    error = outcome(
        lambda: Rule(matcher=matcher, action=action, profile=profile, changes=changes, adapters=adapters)  # type: ignore[arg-type]
    )
    if error is not None:
        assert error.setting.startswith("rule."), error


@settings(max_examples=200, deadline=None)
@given(st.one_of(anything, st.dictionaries(st.sampled_from([*POLICY_FIELDS, "x"]), anything, max_size=3)))
def test_policy_parse(values: object) -> None:
    values = real(values)
    error = outcome(lambda: Policy.parse(values))  # type: ignore[arg-type]
    if error is not None:
        keys = [str(key) or repr(key) for key in values] if isinstance(values, dict) else []
        assert error.setting in (*POLICY_FIELDS, "values", "idle/interval/count", *keys), error


def test_a_valid_config_still_comes_out() -> None:
    """The checks reject junk, not the documented forms."""
    config = load_config(
        environ={"KAPATCH_REDIS_IDLE": "10s"},
        overrides={"psycopg": {"profile": "fast-failover"}},
        rules=[Rule.build("*:6379", idle="5s", adapters=("redis",)), Rule.build("10.0.0.0/8", skip=True)],
        profile="aws",
        exclude=["*.internal"],
    )
    assert isinstance(config, Config)
    assert config.for_adapter("redis").policy.idle == 10
    assert len(config.rules) == 3


# ---------------------------------------------------------------- the automatic path


@pytest.fixture(scope="module")
def config_targets(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("targets")
    os.mkfifo(base / "fifo.toml")
    files = {
        "good.toml": 'profile = "aws"\n',
        "bad.toml": 'idle = "abc"\n',
        "raise.toml": 'on_error = "raise"\ncount = 0\n',
        "deep.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "huge.toml": "count = " + "1" * 5000 + "\n",
        "junk.toml": "\x00\xff not toml",
    }
    for name, text in files.items():
        (base / name).write_text(text, encoding="utf-8", errors="surrogateescape")
    return [
        *(str(base / name) for name in files),
        str(base / "fifo.toml"),
        str(base),
        str(base / "missing.toml"),
        "/dev/zero",
        "/dev/urandom",
        "/dev/full",
    ]


def _automatic_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    env.update(environ)
    env["KAPATCH_ENABLED"] = "1"
    return env


env_values = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=["Cs"]), max_size=15),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(
        ["45s", "auto", "off", "redis,psycopg", "*:6379", "10.0.0.0/8", "override", "aws", "raise"]
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_automatic_path_runs_the_program_with_at_most_one_warning(
    data: st.DataObject, config_targets: list[str]
) -> None:
    environ = data.draw(
        st.dictionaries(st.sampled_from([*ENV_NAMES, "KAPATCH_IDEL"]), env_values, max_size=3)
    )
    environ.pop("KAPATCH_ENABLED", None)
    if data.draw(st.booleans()):
        environ["KAPATCH_CONFIG"] = data.draw(st.sampled_from(config_targets))
    python = os.environ.get("TEST_KAPATCH_PYTHON") or sys.executable
    done = subprocess.run(
        [python, "-c", "print('the program ran')"],
        env=_automatic_env(environ),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,  # a hang (a FIFO, /dev/zero) fails here
        check=False,
    )
    lines = [line for line in done.stderr.splitlines() if "kapatch" in line.lower()]
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode == 78:  # on_error=raise, from the variable or the file, and something was wrong
        assert done.stdout == ""
        on_error = environ.get("KAPATCH_ON_ERROR", "").strip().lower()
        assert on_error == "raise" or (
            not on_error and environ.get("KAPATCH_CONFIG", "").endswith("raise.toml")
        )
        return
    assert done.returncode == 0, (environ, done.stderr)
    assert done.stdout == "the program ran\n"
    assert len(lines) <= 1, (environ, done.stderr)
