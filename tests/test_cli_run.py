"""``kapatch run [options] -- COMMAND``: the real console script, real commands, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from test_activation import PROBE, clean_env, expected_policy, require_adapter

KAPATCH = str(Path(sys.executable).with_name("kapatch"))
TIMEOUT = 60


def kapatch(
    *args: str, env: Mapping[str, str] | None = None, cwd: str = "/"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KAPATCH, *args],
        env=dict(clean_env() if env is None else env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def probe_args(plan: Mapping[str, object]) -> list[str]:
    return [sys.executable, "-c", PROBE, json.dumps(plan)]


def last_json(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_console_script_is_installed():
    assert Path(KAPATCH).is_file(), "pip install -e . installs the kapatch console script"


def test_run_patches_the_command_with_its_options(http_server):
    plan = {"socket": [http_server.host, http_server.port]}
    done = kapatch("run", "--idle", "11", "--interval", "3s", "--count", "4", "--user-timeout", "20s", "--",
                   *probe_args(plan))  # fmt: skip
    result = last_json(done)
    assert result["installed"] is True
    assert result["socket"] == {
        "keepalive": 1,
        "idle": 11,
        "interval": 3,
        "count": 4,
        "user_timeout_ms": 20000,
    }
    assert result["env_enabled"] == "1"


def test_run_without_options_uses_the_default_profile(http_server):
    result = last_json(kapatch("run", "--", *probe_args({"socket": [http_server.host, http_server.port]})))
    assert result["socket"] == expected_policy()


def test_run_without_double_dash(http_server):
    result = last_json(
        kapatch("run", "--idle", "9", *probe_args({"socket": [http_server.host, http_server.port]}))
    )
    assert result["socket"]["idle"] == 9  # type: ignore[index]


@pytest.mark.parametrize("status", [0, 3, 7])
def test_exit_status_passes_through(status):
    done = kapatch("run", "--", sys.executable, "-c", f"import sys; sys.exit({status})")
    assert done.returncode == status


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--idle", "abc"),
        ("--interval", "-1"),
        ("--count", "1000"),
        ("--user-timeout", "soon"),
        ("--profile", "nope"),
        ("--mode", "sometimes"),
        ("--adapters", "nosuch"),
        ("--disabled-adapters", "nosuch"),
        ("--on-error", "explode"),
        ("--log-level", "loud"),
        ("--config", "/nonexistent/kapatch.toml"),
    ],
)
def test_bad_option_is_named_and_the_command_never_runs(tmp_path, option, value):
    marker = tmp_path / "ran"
    done = kapatch("run", option, value, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert done.returncode == 2
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("kapatch run: "), done.stderr
    assert option in first or option.lstrip("-").replace("-", "_") in first, done.stderr
    assert value in first, done.stderr
    assert not marker.exists()


def test_a_combination_names_the_option():
    done = kapatch("run", "--profile", "os-default", "--idle", "10", "--", "true")
    assert done.returncode == 2
    assert "--idle" in done.stderr
    assert "give all three" in done.stderr


def test_bad_inherited_variable_is_named():
    done = kapatch("run", "--", "true", env=clean_env(KAPATCH_IDLE="abc"))
    assert done.returncode == 2
    assert "KAPATCH_IDLE='abc'" in done.stderr
    assert "inherited from the environment" in done.stderr


def test_set_reaches_one_adapter_only(http_server, redis_server):
    code = (
        "import json, kapatch.runtime as r; c = r.current_config(); "
        "print(json.dumps([c.for_adapter('redis').policy.idle, c.for_adapter('socket').policy.idle]))"
    )
    done = kapatch("run", "--set", "redis.idle=10s", "--set", "redis.user-timeout=off", "--",
                   sys.executable, "-c", code)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [10, expected_policy()["idle"]]
    require_adapter("redis")
    plan = {"redis": redis_server.url, "socket": [http_server.host, http_server.port]}
    result = last_json(kapatch("run", "--set", "redis.idle=10s", "--", *probe_args(plan)))
    assert result["redis"]["idle"] == 10  # type: ignore[index]
    assert result["socket"] == expected_policy()


@pytest.mark.parametrize(
    ("item", "complaint"),
    [
        ("nosuch.idle=1", "unknown adapter"),
        ("redis.speed=1", "unknown field"),
        ("redisidle=1", "ADAPTER.FIELD"),
    ],
)
def test_bad_set_is_named(item, complaint):
    done = kapatch("run", "--set", item, "--", "true")
    assert done.returncode == 2
    assert "--set" in done.stderr
    assert complaint in done.stderr


def test_config_file_is_passed_as_an_absolute_path(tmp_path, http_server):
    (tmp_path / "kapatch.toml").write_text('idle = "13s"\ninterval = "2s"\ncount = 3\n')
    code = f"import os; os.chdir('/'); exec({PROBE!r})"
    plan = json.dumps({"socket": [http_server.host, http_server.port]})
    done = kapatch(
        "run", "--config", "kapatch.toml", "--", sys.executable, "-c", code, plan, cwd=str(tmp_path)
    )
    result = last_json(done)
    assert result["socket"]["idle"] == 13  # type: ignore[index]
    env = kapatch("run", "--config", "kapatch.toml", "--", "env", cwd=str(tmp_path)).stdout
    assert f"KAPATCH_CONFIG={tmp_path / 'kapatch.toml'}" in env.splitlines()


def test_options_are_exported_to_the_whole_tree(http_server):
    """A shell between kapatch run and Python, then a Python grandchild: all inherit the policy."""
    plan = json.dumps({"socket": [http_server.host, http_server.port]})
    inner = subprocess.list2cmdline([sys.executable, "-c", PROBE, plan])
    grandchild = f"import subprocess, sys; sys.exit(subprocess.run({inner!r}, shell=True).returncode)"
    done = kapatch("run", "--idle", "12", "--mode", "override", "--", "sh", "-c",
                   subprocess.list2cmdline([sys.executable, "-c", grandchild]))  # fmt: skip
    result = last_json(done)
    assert result["socket"]["idle"] == 12  # type: ignore[index]
    env = kapatch(
        "run", "--idle", "12", "--mode", "override", "--on-error", "raise", "--", "env"
    ).stdout.splitlines()
    assert {"KAPATCH_ENABLED=1", "KAPATCH_IDLE=12", "KAPATCH_MODE=override", "KAPATCH_ON_ERROR=raise"} <= set(
        env
    )


def test_command_not_found_is_127():
    done = kapatch("run", "--", "kapatch-no-such-command-here")
    assert done.returncode == 127
    assert "command not found" in done.stderr


def test_no_command_is_a_usage_error():
    done = kapatch("run", "--idle", "10")
    assert done.returncode == 2
    assert "no command given" in done.stderr


def test_unknown_subcommand_is_a_usage_error():
    done = kapatch("frobnicate")
    assert done.returncode == 2
    assert "unknown command 'frobnicate'" in done.stderr


def test_version():
    done = kapatch("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("kapatch ")


@pytest.mark.parametrize("command", ["doctor", "check", "profiles", "status"])
def test_other_subcommands_dispatch(command):
    done = kapatch(command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"kapatch {command}" in done.stdout
