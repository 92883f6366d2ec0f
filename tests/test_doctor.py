"""kapatch doctor / check / profiles / status.

The doctor runs in fresh interpreters here (``python -m kapatch.doctor``), as a person
would run it; its self-test makes real loopback connections through each client and
reads the options back from the kernel. ``check`` connects to the private real servers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from servers import HttpServer, RedisServer

import kapatch
from kapatch._check import parse_host_port, run_check
from kapatch.doctor import run_profiles, run_status
from kapatch.runtime import status

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPATCH_")}
    env.update(extra)
    return env


def _doctor(*args: str, env: dict[str, str] | None = None, pythonpath: Path | None = None) -> tuple[int, str]:
    env = dict(env if env is not None else _clean_env())
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-m", "kapatch.doctor", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
    return done.returncode, done.stdout + done.stderr


def _doctor_json(*args: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    code, out = _doctor("--json", *args, **kwargs)
    return code, json.loads(out[: out.rindex("}") + 1])


@pytest.fixture
def no_kapatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KAPATCH_"):
            monkeypatch.delenv(name)


# --- doctor --------------------------------------------------------------------------------------
def test_doctor_passes_here_and_reads_every_client_back_from_the_kernel() -> None:
    code, report = _doctor_json()
    assert code == 0, report["problems"]
    assert report["ok"] and report["problems"] == []
    assert report["platform"]["options"] == [
        "SO_KEEPALIVE", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT",
    ]  # fmt: skip
    assert set(report["kernel_defaults"]) == {
        "tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes", "tcp_retries2",
    }  # fmt: skip
    assert report["kernel_defaults"]["tcp_keepalive_time"] == int(
        Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text()
    )
    checks = {c["client"]: c for c in report["self_test"]["checks"]}
    # each library's own adapter, not the socket fallback
    owners = {
        "socket": "socket", "asyncio": "socket", "urllib3": "urllib3", "redis": "redis",
        "redis.asyncio": "redis", "psycopg": "psycopg", "psycopg.async": "psycopg",
    }  # fmt: skip
    if importlib.util.find_spec("httpx") is not None:
        owners.update({"httpx": "httpx", "httpx.async": "httpx"})
    for client, module in (("psycopg2", "psycopg2"), ("mysqlclient", "MySQLdb")):
        if importlib.util.find_spec(module) is not None:
            owners[client] = client
    owners.update({"gevent": "gevent", "uvloop": "uvloop"})  # both in the dev extra
    assert {client: check["owner"] for client, check in checks.items()} == owners
    for client, check in checks.items():
        assert check["verified"], check
        assert check["mismatches"] == []
        # balanced profile, as read from the client's own socket
        assert check["kernel"] == {
            "enabled": True, "idle": 60, "interval": 10, "count": 5, "user_timeout_ms": 110000,
        }, client  # fmt: skip


def test_doctor_names_each_installed_runtime_and_uncovered_client_with_its_state() -> None:
    """gevent and uvloop verified live; pycurl (libcurl connects in C) named as not covered."""
    code, report = _doctor_json()
    assert code == 0, report["problems"]
    coverage = report["coverage"]
    for runtime in ("gevent", "uvloop"):
        assert coverage[runtime]["state"] == "verified", coverage[runtime]
        assert coverage[runtime]["adapter"] == runtime
    assert coverage["pycurl"]["state"] == "not covered"
    assert "in C" in coverage["pycurl"]["why"]
    assert any("pycurl" in note and "NOT" in note for note in report["notes"])
    code, out = _doctor("--no-self-test")
    assert code == 0, out
    assert "\nCoverage" in out
    assert "pycurl" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "covered" in lines["gevent"]  # without the self-test: covered, not verified
    assert "not covered" in lines["pycurl"]


def test_doctor_says_when_the_adapter_for_a_runtime_is_off() -> None:
    code, report = _doctor_json(env=_clean_env(KAPATCH_DISABLED_ADAPTERS="uvloop"))
    assert code == 0, report["problems"]  # a note, not a problem: the operator chose it
    assert report["coverage"]["uvloop"]["state"] == "adapter off"
    assert report["coverage"]["uvloop"]["why"] == "not selected by the configuration"
    assert any("uvloop" in note for note in report["notes"])


def test_doctor_human_output_has_sections_and_a_verdict() -> None:
    code, out = _doctor()
    assert code == 0, out
    for section in ("Platform", "Kernel defaults", "Configuration", "Client libraries", "Live self-test"):
        assert f"\n{section}" in out
    assert out.rstrip().splitlines()[-1] == "kapatch doctor: OK"


def test_doctor_says_where_each_value_came_from_and_the_self_test_follows_it(tmp_path: Path) -> None:
    config = tmp_path / "kapatch.toml"
    config.write_text('profile = "aws"\ncount = 6\n')
    env = _clean_env(KAPATCH_CONFIG=str(config), KAPATCH_REDIS_IDLE="15s", KAPATCH_INTERVAL="7")
    code, report = _doctor_json(env=env)
    assert code == 0, report["problems"]
    redis_sources = report["configuration"]["adapters"]["redis"]["sources"]
    assert redis_sources["idle"] == "env KAPATCH_REDIS_IDLE"
    assert redis_sources["interval"] == "env KAPATCH_INTERVAL"
    assert redis_sources["count"].startswith("file ")
    assert "profile aws" in redis_sources["user_timeout"]
    socket_sources = report["configuration"]["adapters"]["socket"]["sources"]
    assert "profile aws" in socket_sources["idle"]
    checks = {c["client"]: c for c in report["self_test"]["checks"]}
    assert checks["redis"]["kernel"]["idle"] == 15  # the per-adapter override, on redis's socket
    assert checks["socket"]["kernel"]["idle"] == 180  # aws profile
    assert {c["kernel"]["interval"] for c in checks.values()} == {7}
    assert {c["kernel"]["count"] for c in checks.values()} == {6}


def test_doctor_fails_on_a_configuration_error() -> None:
    code, out = _doctor(env=_clean_env(KAPATCH_IDLE="abc"))
    assert code == 1
    assert "configuration error: KAPATCH_IDLE='abc'" in out
    assert out.rstrip().endswith("kapatch doctor: 1 problem(s)")


def test_doctor_fails_when_an_installed_client_library_does_not_import(tmp_path: Path) -> None:
    # A broken `redis` package shadows the real one: metadata still says redis is installed.
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "__init__.py").write_text("raise ImportError('redis is broken on purpose')\n")
    code, report = _doctor_json(pythonpath=tmp_path)
    assert code == 1
    assert report["self_test"]["imports"]["redis"] == "ImportError: redis is broken on purpose"
    assert any("redis is installed but fails to import" in p for p in report["problems"]), report["problems"]
    # The other clients are still tested, and pass.
    tested = {c["client"] for c in report["self_test"]["checks"]}
    assert {"socket", "asyncio", "urllib3", "psycopg", "psycopg.async"} <= tested
    assert not tested & {"redis", "redis.asyncio"}


def test_doctor_fails_on_an_installed_but_unsupported_version(tmp_path: Path) -> None:
    # importlib.metadata finds the first distribution on sys.path: an old redis, as far as it knows.
    dist = tmp_path / "redis-4.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: redis\nVersion: 4.0.0\n")
    code, report = _doctor_json("--no-self-test", pythonpath=tmp_path)
    assert code == 1
    assert report["libraries"]["redis"]["version"] == "4.0.0"
    assert "redis: redis 4.0.0 is not supported (supported: >=5, <9)" in report["problems"]


def test_doctor_fails_when_the_kernel_refuses_an_option(tmp_path: Path) -> None:
    # This kernel accepts every valid policy, so a refusal (an old kernel without
    # TCP_USER_TIMEOUT answers ENOPROTOOPT) is simulated in the doctor's interpreter.
    script = textwrap.dedent(
        """
        import errno, socket, sys
        real = socket.socket.setsockopt
        def setsockopt(self, level, option, *value):
            if option == socket.TCP_USER_TIMEOUT:
                raise OSError(errno.ENOPROTOOPT, "Protocol not available")
            return real(self, level, option, *value)
        socket.socket.setsockopt = setsockopt
        from kapatch.doctor import main
        sys.exit(main(["doctor", "--no-self-test"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_clean_env(), cwd=ROOT, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the kernel refuses TCP_USER_TIMEOUT: [Errno 92] Protocol not available" in done.stdout
    assert "  NO: idle 60s, interval 10s, count 5, user timeout 110000ms (auto)" in done.stdout


def test_doctor_leaves_its_own_process_unpatched() -> None:
    script = (
        "import socket, sys; from kapatch.doctor import collect_report; "
        "original = socket.socket.connect; report = collect_report(); "
        "assert report['self_test']['checks'], report; "
        "print(socket.socket.connect is original, "
        "[m for m in ('redis', 'urllib3', 'psycopg') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert done.stdout.strip() == "True []", done.stdout + done.stderr


# --- check ---------------------------------------------------------------------------------------
def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert parse_host_port("db.internal:5432") == ("db.internal", 5432)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    for bad in ("::1:80", "localhost", "host:0", "host:99999", "[::1]80", ":80", "host:http"):
        with pytest.raises(ValueError, match=r"expected|IPv6|port"):
            parse_host_port(bad)


@pytest.mark.usefixtures("no_kapatch_env")
def test_check_reports_the_kernel_values_of_a_real_connection(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"{redis_server.host}:{redis_server.port}"
    code = run_check([target, "--idle", "7s", "--interval", "3", "--count", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["ok"] and out["mismatches"] == []
    assert out["kernel"] == {"enabled": True, "idle": 7, "interval": 3, "count": 2, "user_timeout_ms": 13000}
    assert out["sources"]["idle"] == "argument"
    assert out["sources"]["user_timeout"] == "profile balanced"

    assert run_check([target, "--profile", "aws"]) == 0
    text = capsys.readouterr().out
    assert "TCP_KEEPIDLE      180 s" in text
    assert text.rstrip().endswith("kapatch check: OK")
    assert not status().installed  # check applies to its own socket, installs nothing


@pytest.mark.usefixtures("no_kapatch_env")
def test_check_over_ipv6(http_server_v6: HttpServer, capsys: pytest.CaptureFixture[str]) -> None:
    port = int(http_server_v6.url.rsplit(":", 1)[1].split("/")[0])
    assert run_check([f"[::1]:{port}", "--profile", "fast-failover", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["address"] == "::1"
    assert (out["kernel"]["idle"], out["kernel"]["interval"], out["kernel"]["count"]) == (10, 5, 3)


@pytest.mark.usefixtures("no_kapatch_env")
def test_check_follows_per_adapter_overrides_and_rules(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"{redis_server.host}:{redis_server.port}"
    monkeypatch.setenv("KAPATCH_REDIS_IDLE", "11")
    assert run_check([target, "--adapter", "redis", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kernel"]["idle"] == 11
    monkeypatch.setenv("KAPATCH_EXCLUDE", f"*:{redis_server.port}")
    assert run_check([target, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "skipped by rule" in out["rule"]
    assert out["kernel"]["enabled"] is False  # left exactly as the kernel makes it


@pytest.mark.usefixtures("no_kapatch_env")
def test_check_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connection refused
        assert run_check([f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "connection failed: ConnectionRefusedError" in out
    assert out.rstrip().endswith("kapatch check: FAILED")
    assert run_check(["127.0.0.1:6379", "--idle", "abc"]) == 2
    assert "idle='abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_check(["::1:80"])
    assert exit_info.value.code == 2


# --- profiles, status ----------------------------------------------------------------------------
def test_profiles_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_profiles(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(kapatch.PROFILES)
    aws = next(r for r in rows if r["name"] == "aws")
    assert (aws["idle"], aws["interval"], aws["count"], aws["detection_bound_s"]) == (180, 20, 4, 260)
    assert aws["reason"] == kapatch.PROFILES["aws"].reason
    assert run_profiles([]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["profile", "idle"]
    assert any(line.startswith("fast-failover") and "25s" in line for line in table.splitlines())
    assert any(line.startswith("os-default") and " os " in line for line in table.splitlines())


@pytest.mark.usefixtures("no_kapatch_env")
def test_status_installs_from_the_environment_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original_connect = socket.socket.connect
    monkeypatch.setenv("KAPATCH_PROFILE", "aws")
    monkeypatch.setenv("KAPATCH_DISABLED_ADAPTERS", "psycopg")
    assert run_status([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kapatch: installed, profile aws, mode respect")
    assert "[off] psycopg" in out and "[on ] socket" in out
    assert not status().installed and socket.socket.connect is original_connect
    monkeypatch.setenv("KAPATCH_COUNT", "0")
    assert run_status([]) == 2
    assert "KAPATCH_COUNT='0'" in capsys.readouterr().err


def test_the_kapatch_command_dispatches_here(redis_server: RedisServer) -> None:
    target = f"{redis_server.host}:{redis_server.port}"
    done = subprocess.run(
        [sys.executable, "-m", "kapatch.cli", "check", target, "--profile", "gcp", "--user-timeout", "off"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  TCP_KEEPIDLE      300 s        policy 300 s        ok" in done.stdout
    assert "  TCP_USER_TIMEOUT  0 ms         policy 0 ms         ok" in done.stdout
    assert "user_timeout <- argument" in done.stdout
