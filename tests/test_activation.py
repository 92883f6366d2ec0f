"""Activation without code: KAPATCH_ENABLED through kapatch.pth, and ``import kapatch.auto``.

Every check runs in a FRESH interpreter (a subprocess): what the
start-up hook does can only be seen at interpreter start, and the test process must never
be patched by it. The child reads the options back from real connected sockets with
getsockopt (without importing kapatch, so the "unset" case can also show that nothing of
kapatch was imported) and prints them as JSON.

The children run ``TEST_KAPATCH_PYTHON`` when it is set (scripts/test points it at a venv
with the built wheel installed, .venv-wheel/), else this interpreter (the editable install):
the same checks serve both. Its name is outside ``KAPATCH_*`` on purpose: that prefix is
kapatch's settings, which conftest.py strips from the suite and kapatch rejects when unknown.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import pytest
from checks import READ_SOCKET_SOURCE

from kapatch import _bootstrap
from kapatch.profiles import DEFAULT_PROFILE, get_profile

ROOT = Path(__file__).resolve().parent.parent
ACTIVATION = ROOT / "activation"
CHILD_TIMEOUT = 60
PYTHON = os.environ.get("TEST_KAPATCH_PYTHON") or sys.executable
"""The interpreter under test: the wheel's venv (scripts/test) or the suite's own."""
EX_CONFIG = 78

# The child: records which kapatch/wrapt modules exist at interpreter start, optionally
# imports modules (kapatch.auto), connects with each client named in argv[1] and reads
# the kernel's view of each socket back.
PROBE = (
    r"""
import json, os, socket, sys
loaded_at_start = sorted(m for m in sys.modules if m.split(".")[0] in ("kapatch", "wrapt", "_kapatch_gate"))
plan = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
for name in plan.get("import", ()):
    __import__(name)
"""
    + READ_SOCKET_SOURCE
    + r"""
out = {"loaded_at_start": loaded_at_start}
if "socket" in plan:
    with socket.create_connection(tuple(plan["socket"]), timeout=10) as s:
        out["socket"] = read(s)
if "requests" in plan:
    import requests
    with requests.Session() as session, session.get(plan["requests"] + "/ok", stream=True, timeout=10) as r:
        out["requests"] = read(r.raw.connection.sock)
if "redis" in plan:
    import redis
    client = redis.Redis.from_url(plan["redis"], socket_timeout=10)
    client.ping()
    try:
        connection = client.connection_pool.get_connection()
    except TypeError:  # redis-py 5 wants a command name
        connection = client.connection_pool.get_connection("PING")
    out["redis"] = read(connection._sock)
    client.connection_pool.release(connection)
    client.close()
if "psycopg" in plan:
    import psycopg
    with psycopg.connect(plan["psycopg"], connect_timeout=10) as conn:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as s:
            out["psycopg"] = read(s)
kapatch = sys.modules.get("kapatch")
out["installed"] = bool(kapatch is not None and kapatch.status().installed)
out["env_enabled"] = os.environ.get("KAPATCH_ENABLED")
print(json.dumps(out))
"""
)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any KAPATCH_* variable, plus *settings*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    env.update(settings)
    return env


def run_python(
    args: list[str], env: Mapping[str, str], python: str = PYTHON, timeout: float = CHILD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    # cwd "/": `python -c` puts the working directory first on sys.path, and the repository's
    # own kapatch/ must not shadow the installed one.
    return subprocess.run(
        [python, *args],
        env=dict(env),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def probe(plan: Mapping[str, object], env: Mapping[str, str], python: str = PYTHON) -> dict[str, object]:
    """Run PROBE with *plan*; the child must exit 0 and print its JSON."""
    done = run_python(["-c", PROBE, json.dumps(plan)], env, python)
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stderr}"
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def expected_policy() -> dict[str, int]:
    policy = get_profile(DEFAULT_PROFILE).policy
    assert policy.idle is not None and policy.interval is not None and policy.count is not None
    return {
        "keepalive": 1,
        "idle": policy.idle,
        "interval": policy.interval,
        "count": policy.count,
        "user_timeout_ms": policy.user_timeout_ms or 0,
    }


def kapatch_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "kapatch" in line.lower()]


def require_adapter(name: str) -> None:
    if importlib.util.find_spec(f"kapatch.adapters.{name}") is None:
        pytest.skip(f"the {name} adapter is not in this tree yet")


# --- the files and what ships them -------------------------------------------------------


def test_activation_files_are_installed_in_this_environment():
    """The interpreter under test must have them, or every child below tests nothing."""
    code = (
        "import sys; from kapatch import _sysinfo; "
        "print(sys.prefix); [print(_sysinfo.installed_file(n)) for n in sys.argv[1:]]"
    )
    names = [_bootstrap.PTH_NAME, _bootstrap.START_NAME, _bootstrap.GATE_MODULE]
    done = run_python(["-c", code, *names], clean_env())
    assert done.returncode == 0, done.stderr
    prefix, *found = done.stdout.splitlines()
    for name, installed in zip(names, found, strict=True):
        assert installed != "None", f"{name} is not installed in {prefix}: run `pip install -e .` again"
        assert Path(installed).read_text() == (ACTIVATION / name).read_text(), (
            f"{installed} is stale (pip install copies it): reinstall"
        )


def test_kapatch_comes_from_the_interpreter_under_test():
    """With TEST_KAPATCH_PYTHON, kapatch is the installed wheel's, never this checkout's."""
    done = run_python(["-c", "import sys, kapatch; print(sys.prefix); print(kapatch.__file__)"], clean_env())
    assert done.returncode == 0, done.stderr
    prefix, where = done.stdout.split()
    if "TEST_KAPATCH_PYTHON" in os.environ:
        assert where.startswith(prefix + os.sep), where
        assert not where.startswith(str(ROOT / "kapatch")), where
    else:
        assert where == str(ROOT / "kapatch" / "__init__.py")


def _pth_import_line() -> str:
    lines = [line for line in (ACTIVATION / "kapatch.pth").read_text().splitlines() if line.strip()]
    code = [line for line in lines if not line.startswith("#")]
    assert len(code) == 1, "site.py runs each import line; there must be exactly one"
    assert code[0].startswith("import "), "site.py executes only lines starting with 'import '"
    return code[0]


def test_the_pth_gate_words_are_the_gate_modules_and_bootstraps():
    gate = _load_gate_module()
    line = _pth_import_line()
    words = ast.literal_eval(re.search(r"not in (\([^)]*\))", line).group(1))  # type: ignore[union-attr]
    assert words == gate.OFF_WORDS == _bootstrap._OFF_WORDS
    for value in ("", "0", "false", "No", " off ", "1", "true", "yes", "maybe"):
        env = {"KAPATCH_ENABLED": value}
        assert gate.enabled(env) == _bootstrap.gate_open(env) == (value.strip().lower() not in words)


def _load_gate_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_kapatch_gate_source", ACTIVATION / "_kapatch_gate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_start_file_is_pep_829_entry_points_that_resolve():
    entries = [
        line.strip()
        for line in (ACTIVATION / "kapatch.start").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert entries == ["_kapatch_gate:start"]
    for entry in entries:
        assert re.fullmatch(r"[\w.]+:[\w.]+", entry), "PEP 829 wants pkg.mod:callable, colon mandatory"
        assert callable(pkgutil.resolve_name(entry))


def test_start_entry_point_imports_nothing_when_unset():
    """What Python 3.15+ calls on every start: it must stop at the environment check."""
    code = (
        "import sys, _kapatch_gate; _kapatch_gate.start(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kapatch', 'wrapt')))"
    )
    done = run_python(["-c", code], clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- KAPATCH_ENABLED alone -----------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "0", "false", "OFF", "no"])
def test_unset_or_off_imports_and_patches_nothing(http_server, value):
    env = clean_env() if value is None else clean_env(KAPATCH_ENABLED=value)
    result = probe({"socket": [http_server.host, http_server.port]}, env)
    assert result["loaded_at_start"] == []
    assert result["installed"] is False
    assert result["socket"]["keepalive"] == 0  # type: ignore[index]
    assert kapatch_lines(str(result["stderr"])) == []


def test_enabled_alone_patches_raw_sockets(http_server):
    result = probe({"socket": [http_server.host, http_server.port]}, clean_env(KAPATCH_ENABLED="1"))
    assert "kapatch.config" in result["loaded_at_start"]  # type: ignore[operator]
    assert result["installed"] is True
    assert result["socket"] == expected_policy()
    assert kapatch_lines(str(result["stderr"])) == []


def test_enabled_alone_patches_requests(http_server):
    require_adapter("urllib3")
    result = probe({"requests": http_server.url}, clean_env(KAPATCH_ENABLED="1"))
    assert result["requests"] == expected_policy()


def test_enabled_alone_patches_redis(redis_server):
    require_adapter("redis")
    result = probe({"redis": redis_server.url}, clean_env(KAPATCH_ENABLED="1"))
    # redis-py 8 turns keepalive on by itself at 30/5/3: the policy must replace that default.
    assert result["redis"] == expected_policy()


def test_enabled_alone_patches_psycopg(postgres_server):
    require_adapter("psycopg")
    result = probe({"psycopg": postgres_server.dsn}, clean_env(KAPATCH_ENABLED="1"))
    assert result["psycopg"] == expected_policy()


def test_settings_from_the_environment_reach_the_socket(http_server):
    env = clean_env(KAPATCH_ENABLED="yes", KAPATCH_IDLE="11s", KAPATCH_INTERVAL="3", KAPATCH_COUNT="4")
    result = probe({"socket": [http_server.host, http_server.port]}, env)
    assert result["socket"] == {
        "keepalive": 1,
        "idle": 11,
        "interval": 3,
        "count": 4,
        "user_timeout_ms": (11 + 3 * 4) * 1000,
    }


def test_bad_value_warns_once_and_runs_unpatched(http_server):
    env = clean_env(KAPATCH_ENABLED="1", KAPATCH_IDLE="abc")
    result = probe({"socket": [http_server.host, http_server.port]}, env)
    lines = kapatch_lines(str(result["stderr"]))
    assert len(lines) == 1, result["stderr"]
    assert "KAPATCH_IDLE" in lines[0]
    assert "'abc'" in lines[0]
    assert "WITHOUT kapatch" in lines[0]
    assert result["installed"] is False
    assert result["socket"]["keepalive"] == 0  # type: ignore[index]


def test_invalid_enabled_value_is_reported_not_ignored(http_server):
    result = probe({"socket": [http_server.host, http_server.port]}, clean_env(KAPATCH_ENABLED="maybe"))
    lines = kapatch_lines(str(result["stderr"]))
    assert len(lines) == 1
    assert "KAPATCH_ENABLED='maybe'" in lines[0]
    assert result["socket"]["keepalive"] == 0  # type: ignore[index]


def test_bad_value_with_on_error_raise_stops_before_the_program():
    env = clean_env(KAPATCH_ENABLED="1", KAPATCH_IDLE="abc", KAPATCH_ON_ERROR="raise")
    done = run_python(["-c", "print('the program ran')"], env)
    assert done.returncode == EX_CONFIG
    assert done.stdout == ""
    assert "KAPATCH_IDLE='abc'" in done.stderr
    assert "KAPATCH_ON_ERROR=raise" in done.stderr
    assert "Traceback" not in done.stderr  # a message, not site.py's "Error processing line"


def test_on_error_raise_from_the_config_file_is_honoured(tmp_path):
    config = tmp_path / "kapatch.toml"
    config.write_text('on_error = "raise"\n')
    env = clean_env(KAPATCH_ENABLED="1", KAPATCH_CONFIG=str(config), KAPATCH_IDLE="abc")
    done = run_python(["-c", "print('the program ran')"], env)
    assert done.returncode == EX_CONFIG
    assert "KAPATCH_IDLE='abc'" in done.stderr


def test_on_error_raise_in_the_file_fails_fast_on_a_bad_value_in_the_same_file(tmp_path):
    """The file's own on_error is read before the rest of it is judged."""
    config = tmp_path / "kapatch.toml"
    config.write_text('on_error = "raise"\nidle = "abc"\n')
    done = run_python(
        ["-c", "print('the program ran')"], clean_env(KAPATCH_ENABLED="1", KAPATCH_CONFIG=str(config))
    )
    assert done.returncode == EX_CONFIG, done.stderr
    assert done.stdout == ""
    assert f"{config}: idle='abc'" in done.stderr
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.kapatch]\non_error = "raise"\ncount = 0\n')
    done = run_python(["-c", "print('ran')"], clean_env(KAPATCH_ENABLED="1", KAPATCH_CONFIG=str(pyproject)))
    assert done.returncode == EX_CONFIG, done.stderr
    # the variable still beats the file, both ways
    env = clean_env(KAPATCH_ENABLED="1", KAPATCH_CONFIG=str(config), KAPATCH_ON_ERROR="warn")
    done = run_python(["-c", "print('the program ran')"], env)
    assert done.returncode == 0
    assert done.stdout == "the program ran\n"
    assert len(kapatch_lines(done.stderr)) == 1, done.stderr


def test_import_auto_raises_for_on_error_raise_in_the_file(tmp_path):
    config = tmp_path / "kapatch.toml"
    config.write_text('on_error = "raise"\n[redis]\nidle = "abc"\n')
    done = run_python(["-c", "import kapatch.auto\nprint('ran')"], clean_env(KAPATCH_CONFIG=str(config)))
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"ConfigError: {config}: [redis] idle='abc'" in done.stderr


def _fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "fifo.toml")
    return str(tmp_path / "fifo.toml")


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom", "/dev/full", "directory"])
def test_a_config_that_is_no_regular_file_never_hangs_and_warns_once(tmp_path, target):
    path = {"fifo": lambda: _fifo(tmp_path), "directory": lambda: str(tmp_path)}.get(target, lambda: target)()
    env = clean_env(KAPATCH_ENABLED="1", KAPATCH_CONFIG=path)
    # a FIFO blocked open() forever; /dev/zero grew to gigabytes: 30 s is ample for a start
    done = run_python(["-c", "print('the program ran')"], env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the program ran\n"
    lines = kapatch_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert f"KAPATCH_CONFIG={path!r}: not a regular file" in lines[0]
    assert "a regular TOML file of at most 1 MiB" in lines[0]
    stop = run_python(["-c", "print('ran')"], {**env, "KAPATCH_ON_ERROR": "raise"}, timeout=30)
    assert stop.returncode == EX_CONFIG
    assert stop.stdout == ""


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("KAPATCH_COUNT", "9" * 5000), ("KAPATCH_EXCLUDE", "*:" + "5" * 5000), ("KAPATCH_IDLE", "1" * 5000)],
)
def test_a_number_with_thousands_of_digits_warns_naming_the_variable(variable, raw):
    done = run_python(["-c", "print('ran')"], clean_env(KAPATCH_ENABLED="1", **{variable: raw}))
    assert done.returncode == 0, done.stderr
    lines = kapatch_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kapatch: {variable}='{raw[:10]}"), lines[0]
    assert "activation failed" not in lines[0]
    assert len(lines[0]) < 1000


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("count = " + "7" * 5000 + "\n", "a number with thousands of digits"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "arrays or tables nested too deeply"),
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_a_toml_file_python_cannot_parse_warns_naming_the_file(tmp_path, text, allowed):
    config = tmp_path / "kapatch.toml"
    config.write_text(text)
    done = run_python(["-c", "print('ran')"], clean_env(KAPATCH_ENABLED="1", KAPATCH_CONFIG=str(config)))
    assert done.returncode == 0, done.stderr
    lines = kapatch_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert f"KAPATCH_CONFIG={str(config)!r}: not valid TOML: {allowed}" in lines[0]


def test_unknown_variable_is_reported_with_a_suggestion(http_server):
    env = clean_env(KAPATCH_ENABLED="1", KAPATCH_IDEL="30")
    result = probe({"socket": [http_server.host, http_server.port]}, env)
    lines = kapatch_lines(str(result["stderr"]))
    assert len(lines) == 1
    assert "KAPATCH_IDEL" in lines[0]
    assert "KAPATCH_IDLE" in lines[0]


# --- import kapatch.auto --------------------------------------------------------------------


def test_auto_installs_without_the_variable(http_server):
    result = probe({"import": ["kapatch.auto"], "socket": [http_server.host, http_server.port]}, clean_env())
    assert result["loaded_at_start"] == []  # the start-up hook stayed shut; the import did it
    assert result["installed"] is True
    assert result["socket"] == expected_policy()
    assert result["env_enabled"] == "1"  # exported, so Python children are patched too


def test_auto_respects_enabled_false(http_server):
    plan = {"import": ["kapatch.auto"], "socket": [http_server.host, http_server.port]}
    result = probe(plan, clean_env(KAPATCH_ENABLED="0"))
    assert result["socket"]["keepalive"] == 0  # type: ignore[index]
    assert result["env_enabled"] == "0"


@pytest.mark.parametrize("client", ["requests", "redis", "psycopg"])
def test_auto_patches_clients(client, http_server, redis_server, postgres_server):
    require_adapter({"requests": "urllib3"}.get(client, client))
    target = {"requests": http_server.url, "redis": redis_server.url, "psycopg": postgres_server.dsn}[client]
    result = probe({"import": ["kapatch.auto"], client: target}, clean_env())
    assert result[client] == expected_policy()


def test_auto_bad_value_warns_once_and_runs_unpatched(http_server):
    plan = {"import": ["kapatch.auto"], "socket": [http_server.host, http_server.port]}
    result = probe(plan, clean_env(KAPATCH_IDLE="abc"))
    lines = kapatch_lines(str(result["stderr"]))
    assert len(lines) == 1, result["stderr"]
    assert "KAPATCH_IDLE='abc'" in lines[0]
    assert result["socket"]["keepalive"] == 0  # type: ignore[index]
    assert result["env_enabled"] is None  # nothing was turned on, so nothing is exported


def test_auto_after_the_start_hook_failed_does_not_warn_twice(http_server):
    plan = {"import": ["kapatch.auto"], "socket": [http_server.host, http_server.port]}
    result = probe(plan, clean_env(KAPATCH_ENABLED="1", KAPATCH_IDLE="abc"))
    assert len(kapatch_lines(str(result["stderr"]))) == 1, result["stderr"]


def test_auto_with_on_error_raise_raises_the_config_error():
    env = clean_env(KAPATCH_IDLE="abc", KAPATCH_ON_ERROR="raise")
    code = "import kapatch.auto\nprint('the program ran')"
    done = run_python(["-c", code], env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "kapatch._errors.ConfigError: KAPATCH_IDLE='abc'" in done.stderr


def test_auto_after_the_start_hook_is_a_no_op():
    code = (
        "import kapatch.runtime as r; before = (r.context().generation, r.current_config())\n"
        "import kapatch.auto\n"
        "print(before == (r.context().generation, r.current_config()), before[1] is not None)"
    )
    done = run_python(["-c", code], clean_env(KAPATCH_ENABLED="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_auto_leaves_an_explicit_install_alone():
    code = (
        "import os, kapatch\n"
        "kapatch.install(idle='7s', interval='2s', count=3)\n"
        "import kapatch.auto\n"
        "print(kapatch.runtime.current_config().policy.idle, os.environ.get('KAPATCH_ENABLED'))\n"
        "kapatch.uninstall()"
    )
    done = run_python(["-c", code], clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "None"]


# --- the built artefacts: a real wheel and a real editable install, in throwaway venvs -------


def _purelib(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def _make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def _pip_install(python: Path, *args: str) -> None:
    # The suite's pip installs into the throwaway interpreter (pip >= 22.3 --python); the build
    # backend (hatchling) comes from the package index in pip's isolated build environment.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _deps_env(**settings: str) -> dict[str, str]:
    """kapatch's own dependencies (wrapt) from the suite's environment, kapatch from the venv."""
    return clean_env(PYTHONPATH=sysconfig.get_path("purelib"), **settings)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (work / "dist").glob("kapatch-*.whl")
    python = _make_venv(work / "venv")
    _pip_install(python, str(wheel))
    return python


def test_wheel_ships_the_activation_files(wheel_venv):
    purelib = _purelib(wheel_venv.parent.parent)
    for name in ("kapatch.pth", "kapatch.start", "_kapatch_gate.py"):
        assert (purelib / name).read_text() == (ACTIVATION / name).read_text()


def test_wheel_install_activates_from_the_environment_alone(wheel_venv, http_server):
    plan = {"socket": [http_server.host, http_server.port]}
    off = probe(plan, _deps_env(), str(wheel_venv))
    assert off["loaded_at_start"] == []
    assert off["socket"]["keepalive"] == 0  # type: ignore[index]
    code = "import kapatch; print(kapatch.__file__)"
    where = run_python(["-c", code], _deps_env(), str(wheel_venv))
    assert where.stdout.startswith(str(wheel_venv.parent.parent)), "kapatch must come from the wheel"
    on = probe(plan, _deps_env(KAPATCH_ENABLED="1"), str(wheel_venv))
    assert on["socket"] == expected_policy()


def test_without_wrapt_raw_sockets_are_still_patched_and_start_is_quiet(wheel_venv, http_server):
    """wrapt is imported only when a client library is; the connect hook and boot need none of it."""
    env = clean_env(KAPATCH_ENABLED="1")  # the wheel venv has no dependencies at all
    result = probe({"socket": [http_server.host, http_server.port]}, env, str(wheel_venv))
    assert kapatch_lines(str(result["stderr"])) == []
    assert result["socket"] == expected_policy()


def test_a_kapatch_that_cannot_import_warns_once_and_runs(wheel_venv, http_server, tmp_path):
    """A broken install (here: a shadowing package that fails to import): one line, and the program runs."""
    broken = tmp_path / "shadow" / "kapatch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("simulated broken install")\n')
    env = clean_env(KAPATCH_ENABLED="1", PYTHONPATH=str(broken.parent))
    result = probe({"socket": [http_server.host, http_server.port]}, env, str(wheel_venv))
    lines = kapatch_lines(str(result["stderr"]))
    assert len(lines) == 1, result["stderr"]
    assert "could not be imported" in lines[0]
    assert "simulated broken install" in lines[0]
    assert result["socket"]["keepalive"] == 0  # type: ignore[index]
    stop = run_python(["-c", "print('ran')"], {**env, "KAPATCH_ON_ERROR": "raise"}, str(wheel_venv))
    assert stop.returncode == EX_CONFIG
    assert stop.stdout == ""


def test_editable_install_ships_and_activates(tmp_path, http_server):
    python = _make_venv(tmp_path / "venv")
    _pip_install(python, "-e", str(ROOT))
    purelib = _purelib(tmp_path / "venv")
    assert (purelib / "kapatch.pth").read_text() == (ACTIVATION / "kapatch.pth").read_text()
    where = run_python(["-c", "import kapatch; print(kapatch.__file__)"], _deps_env(), str(python))
    assert where.stdout.strip() == str(ROOT / "kapatch" / "__init__.py")
    plan = {"socket": [http_server.host, http_server.port]}
    on = probe(plan, _deps_env(KAPATCH_ENABLED="1"), str(python))
    assert on["socket"] == expected_policy()
    # The documented limit: without the .pth, KAPATCH_ENABLED does nothing, and kapatch run says so.
    (purelib / "kapatch.pth").unlink()
    (purelib / "kapatch.start").unlink()
    run = ["-m", "kapatch.cli", "run", "--", str(python), "-c", PROBE, json.dumps(plan)]
    done = run_python(run, _deps_env(), str(python))
    assert done.returncode == 0, done.stderr
    assert "kapatch.pth is not installed" in done.stderr
    assert json.loads(done.stdout)["socket"]["keepalive"] == 0
